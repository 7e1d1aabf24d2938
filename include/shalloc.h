/*
 * shalloc: the Windows shell's SHAllocShared family on Linux.
 *
 * Generated from crates/shalloc/src/capi by cbindgen (see crates/shalloc/cbindgen.toml);
 * do not edit: run `SHALLOC_UPDATE_HEADER=1 cargo test -p shalloc --test header`.
 *
 * Link with -lshalloc (pkg-config --cflags --libs shalloc).
 */

#ifndef SHALLOC_H
#define SHALLOC_H

#include <stddef.h>
#include <stdint.h>

// A handle value: pointer-sized, as on Windows; shalloc's values are below 2^31.
typedef void *HANDLE;

// A pointer to anything constant.
typedef const void *LPCVOID;

// A 32-bit unsigned integer.
typedef uint32_t DWORD;

// A pointer to anything.
typedef void *LPVOID;

// A Win32 boolean: 0 is false, anything else true.
typedef int32_t BOOL;

// A size in bytes.
typedef size_t SIZE_T;

// The fill function of `shalloc_alloc_with`: writes `size` bytes at `buffer` (which start
// zeroed) and returns TRUE, or returns FALSE to abandon the block.
typedef BOOL (*shalloc_fill_fn)(LPVOID buffer, SIZE_T size, LPVOID context);

// The Win32 true.
#define TRUE 1

// The Win32 false.
#define FALSE 0

// Last error: the handle is not open in the named table.
#define ERROR_INVALID_HANDLE 6

// Last error: the process id names no process.
#define ERROR_INVALID_PARAMETER 87

// Last error: the process's table is closed to the caller (another user, not dumpable, a zombie).
#define ERROR_ACCESS_DENIED 5

// Last error: out of memory, or a block larger than the broker allows.
#define ERROR_NOT_ENOUGH_MEMORY 8

// Last error: a table, the user or the broker is at its handle limit.
#define ERROR_NO_SYSTEM_RESOURCES 1450

// Last error: no broker could be reached or started.
#define ERROR_SERVICE_NOT_ACTIVE 1062

// Last error: the pointer is in no live view (unlock), or not at the start of one (size).
#define ERROR_INVALID_ADDRESS 487

// `SHMapHandle` option: close the handle in the source table after duplicating it.
#define DUPLICATE_CLOSE_SOURCE 1

// Last error: the fill function of `shalloc_alloc_with` returned FALSE.
#define ERROR_CANCELLED 1223

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// Creates a block of `dwSize` bytes, copies `dwSize` bytes from `pvData` into it (or zero-fills it
// when `pvData` is NULL), and creates a handle to it in the table of process `dwProcessId`.
//
// Returns the handle, valid in that process's table; NULL on failure.
//
// # Safety
// `pvData` is NULL or points to `dwSize` readable bytes.
HANDLE SHAllocShared(LPCVOID pvData, DWORD dwSize, DWORD dwProcessId);

// Maps the block of handle `hData`, in the table of process `dwProcessId`, into the calling
// process as a new read/write view.
//
// Returns the view's first byte; NULL on failure.
LPVOID SHLockShared(HANDLE hData, DWORD dwProcessId);

// As `SHLockShared`, but the view is read-only when `bWrite` is FALSE (a write through it faults).
LPVOID SHLockSharedEx(HANDLE hData, DWORD dwProcessId, BOOL bWrite);

// Unmaps the view that contains `pvData` (normally the pointer `SHLockShared` returned).
//
// Returns TRUE; FALSE for NULL or a pointer inside no live view made by `SHLockShared` (nothing
// is unmapped then).
BOOL SHUnlockShared(LPVOID pvData);

// Closes handle `hData` in the table of process `dwProcessId`, whichever process allocated it.
//
// Returns TRUE on success, and for a NULL handle (leaving the last error untouched); FALSE for an
// unknown or already closed handle.
BOOL SHFreeShared(HANDLE hData, DWORD dwProcessId);

// Duplicates handle `hData` from the table of process `dwSourceProcessId` into the table of
// process `dwDestinationProcessId`. `dwDesiredAccess` is ignored (the copy has the same access);
// `dwOptions` may hold `DUPLICATE_CLOSE_SOURCE`, which closes the original afterwards.
//
// Returns the new handle, valid in the destination's table; NULL for a NULL handle (leaving the
// last error untouched) and on failure.
HANDLE SHMapHandle(HANDLE hData,
                   DWORD dwSourceProcessId,
                   DWORD dwDestinationProcessId,
                   DWORD dwDesiredAccess,
                   DWORD dwOptions);

// The size in bytes of the block whose view starts at `pvData`.
//
// Returns 0 (and sets `ERROR_INVALID_ADDRESS`) for a pointer that is not the start of a live view.
SIZE_T SHGetSizeShared(LPCVOID pvData);

// The calling thread's last error: the Win32 code of its last failed call.
DWORD shalloc_last_error(void);

// Sets the calling thread's last error (and clears its message), as `SetLastError` does.
void shalloc_set_last_error(DWORD code);

// The reason for the calling thread's last failure, in words ("" when there is none). The string
// stays valid until the thread's next failure or `shalloc_set_last_error`.
const char *shalloc_last_error_message(void);

// As `SHAllocShared`, but the block is frozen: sealed against writing (`F_SEAL_WRITE`) before any
// other process can receive it, so nobody can ever change it. It can only be locked read-only
// (`SHLockSharedEx(h, pid, FALSE)`); `SHLockShared` fails with `ERROR_ACCESS_DENIED`.
//
// # Safety
// `pvData` is NULL or points to `dwSize` readable bytes.
HANDLE shalloc_alloc_frozen(LPCVOID pvData, DWORD dwSize, DWORD dwProcessId);

// Makes a block of `dwSize` bytes and calls `fill(buffer, dwSize, context)` to write it in place,
// with no intermediate copy; nobody else can see the block until `fill` returns. The pages are
// reserved first, so a shortage of memory fails here (NULL, `ERROR_NOT_ENOUGH_MEMORY`), never
// inside `fill`. When `bFrozen` is TRUE the block is frozen after the fill. Returns the handle in
// the table of `dwProcessId`; NULL when `fill` is NULL, returns FALSE (`ERROR_CANCELLED`), or the
// allocation fails.
//
// # Safety
// `fill` must be a valid function that writes at most `size` bytes at `buffer` and does not keep
// the pointer after it returns.
HANDLE shalloc_alloc_with(DWORD dwSize,
                          DWORD dwProcessId,
                          BOOL bFrozen,
                          shalloc_fill_fn fill,
                          LPVOID context);

// Whether the view containing `pvData` shows a frozen block: TRUE only when the block's
// descriptor carries `F_SEAL_WRITE`. FALSE for a block that is not frozen, and for a pointer in no
// view (then with `ERROR_INVALID_ADDRESS`).
BOOL shalloc_is_frozen(LPCVOID pvData);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* SHALLOC_H */
