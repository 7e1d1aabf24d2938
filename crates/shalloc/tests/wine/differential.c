/*
 * differential.c: the same single-process scenarios against two implementations of the
 * SHAllocShared family, for tests/wine_differential.rs to compare line by line.
 *
 *   Windows (x86_64-w64-mingw32-gcc, run under Wine): shlwapi.dll's exports by ordinal,
 *     7 SHAllocShared, 8 SHLockShared, 9 SHUnlockShared, 10 SHFreeShared, 11 SHMapHandle;
 *     last error through GetLastError/SetLastError.
 *   Linux (cc against include/shalloc.h and libshalloc): the library's functions; last error
 *     through shalloc_last_error/shalloc_set_last_error.
 *
 * Output: one normalized line per observation, "<case> <key>=<value>...":
 *   pointers and handles print as null/nonnull, BOOLs as 0/1, and the last error as its number, or
 *   "untouched" when the sentinel 0xdeadbeef set right before the call survived it. Anything
 *   that legitimately differs between two correct implementations (addresses, handle values) is
 *   turned into a yes/no fact first.
 *
 * Only the caller's own process, pid 0 and a pid that names no process (0x7ffffff0) appear: no
 * child processes. Nothing here closes a handle value that might be a real non-shalloc handle.
 */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>

#ifdef _WIN32
#include <windows.h>
#include <fcntl.h>
#include <io.h>

typedef HANDLE(WINAPI *alloc_fn)(LPCVOID, DWORD, DWORD);
typedef LPVOID(WINAPI *lock_fn)(HANDLE, DWORD);
typedef BOOL(WINAPI *unlock_fn)(LPVOID);
typedef BOOL(WINAPI *free_fn)(HANDLE, DWORD);
typedef HANDLE(WINAPI *map_fn)(HANDLE, DWORD, DWORD, DWORD, DWORD);

static alloc_fn p_alloc;
static lock_fn p_lock;
static unlock_fn p_unlock;
static free_fn p_free;
static map_fn p_map;

static DWORD get_error(void) { return GetLastError(); }
static void set_error(DWORD e) { SetLastError(e); }
static DWORD own_pid(void) { return GetCurrentProcessId(); }

/* Loads the five functions from shlwapi.dll by ordinal; 0 when one is missing. */
static int load_functions(void)
{
    HMODULE shlwapi = LoadLibraryA("shlwapi.dll");
    if (!shlwapi)
        return 0;
    /* GetProcAddress returns FARPROC; go through void * to the real signature. */
    p_alloc = (alloc_fn)(void *)GetProcAddress(shlwapi, MAKEINTRESOURCEA(7));
    p_lock = (lock_fn)(void *)GetProcAddress(shlwapi, MAKEINTRESOURCEA(8));
    p_unlock = (unlock_fn)(void *)GetProcAddress(shlwapi, MAKEINTRESOURCEA(9));
    p_free = (free_fn)(void *)GetProcAddress(shlwapi, MAKEINTRESOURCEA(10));
    p_map = (map_fn)(void *)GetProcAddress(shlwapi, MAKEINTRESOURCEA(11));
    /* Text mode would turn "\n" into "\r\n". */
    _setmode(_fileno(stdout), _O_BINARY);
    return p_alloc && p_lock && p_unlock && p_free && p_map;
}
#else
#include <unistd.h>
#include "shalloc.h"

#ifndef DUPLICATE_SAME_ACCESS
#define DUPLICATE_SAME_ACCESS 2
#endif
#ifndef FILE_MAP_ALL_ACCESS
#define FILE_MAP_ALL_ACCESS 0xf001f
#endif

static HANDLE (*p_alloc)(LPCVOID, DWORD, DWORD) = SHAllocShared;
static LPVOID (*p_lock)(HANDLE, DWORD) = SHLockShared;
static BOOL (*p_unlock)(LPVOID) = SHUnlockShared;
static BOOL (*p_free)(HANDLE, DWORD) = SHFreeShared;
static HANDLE (*p_map)(HANDLE, DWORD, DWORD, DWORD, DWORD) = SHMapHandle;

static DWORD get_error(void) { return shalloc_last_error(); }
static void set_error(DWORD e) { shalloc_set_last_error(e); }
static DWORD own_pid(void) { return (DWORD)getpid(); }
static int load_functions(void) { return 1; }
#endif

#define SENTINEL 0xdeadbeefu
/* A pid that names no process: above Linux's largest pid_max (2^22), and no Windows pid. */
#define NO_SUCH_PID 0x7ffffff0u
/* A handle value that is open nowhere (Wine's first handles are small; shalloc's start at a
 * random point of 2^29 values). */
#define UNKNOWN_HANDLE ((HANDLE)(size_t)0x1234)

static DWORD me;

static void print_error(DWORD err)
{
    if (err == SENTINEL)
        printf(" err=untouched\n");
    else
        printf(" err=%lu\n", (unsigned long)err);
}

static void print_ptr(const char *name, const void *ret, DWORD err)
{
    printf("%s ret=%s", name, ret ? "nonnull" : "null");
    print_error(err);
}

static void print_bool(const char *name, BOOL ret, DWORD err)
{
    printf("%s ret=%d", name, ret ? 1 : 0);
    print_error(err);
}

static void fact(const char *name, const char *key, int value)
{
    printf("%s %s=%d\n", name, key, value ? 1 : 0);
}

/* The five calls, each between setting the sentinel and reading the last error. */
static HANDLE do_alloc(const char *name, const void *data, DWORD size, DWORD pid)
{
    set_error(SENTINEL);
    HANDLE h = p_alloc(data, size, pid);
    DWORD err = get_error();
    print_ptr(name, h, err);
    return h;
}

static unsigned char *do_lock(const char *name, HANDLE h, DWORD pid)
{
    set_error(SENTINEL);
    unsigned char *p = p_lock(h, pid);
    DWORD err = get_error();
    print_ptr(name, p, err);
    return p;
}

static BOOL do_unlock(const char *name, void *p)
{
    set_error(SENTINEL);
    BOOL r = p_unlock(p);
    DWORD err = get_error();
    print_bool(name, r, err);
    return r;
}

static BOOL do_free(const char *name, HANDLE h, DWORD pid)
{
    set_error(SENTINEL);
    BOOL r = p_free(h, pid);
    DWORD err = get_error();
    print_bool(name, r, err);
    return r;
}

static HANDLE do_map(const char *name, HANDLE h, DWORD src, DWORD dst, DWORD access, DWORD options)
{
    set_error(SENTINEL);
    HANDLE r = p_map(h, src, dst, access, options);
    DWORD err = get_error();
    print_ptr(name, r, err);
    return r;
}

static unsigned char data16[16];

static int is_data16(const unsigned char *p)
{
    return memcmp(p, data16, sizeof data16) == 0;
}

static void alloc_cases(void)
{
    HANDLE h = do_alloc("alloc_data16", data16, sizeof data16, me);
    if (h) {
        unsigned char *p = do_lock("alloc_data16_lock", h, me);
        if (p) {
            fact("alloc_data16_lock", "copied", is_data16(p));
            do_unlock("alloc_data16_unlock", p);
        }
        do_free("alloc_data16_free", h, me);
    }

    h = do_alloc("alloc_size0", data16, 0, me);
    if (h) {
        unsigned char *p = do_lock("alloc_size0_lock", h, me);
        if (p)
            do_unlock("alloc_size0_unlock", p);
        do_free("alloc_size0_free", h, me);
    }

    h = do_alloc("alloc_size0_nulldata", NULL, 0, me);
    if (h)
        do_free("alloc_size0_nulldata_free", h, me);

    h = do_alloc("alloc_nulldata64", NULL, 64, me);
    if (h) {
        unsigned char *p = do_lock("alloc_nulldata64_lock", h, me);
        if (p) {
            int zero = 1;
            for (int i = 0; i < 64; i++)
                zero &= p[i] == 0;
            fact("alloc_nulldata64_lock", "zero_filled", zero);
            do_unlock("alloc_nulldata64_unlock", p);
        }
        do_free("alloc_nulldata64_free", h, me);
    }
}

static void lock_cases(void)
{
    HANDLE h = do_alloc("lock_alloc", data16, sizeof data16, me);
    unsigned char *p1 = do_lock("lock_first", h, me);
    unsigned char *p2 = do_lock("lock_second", h, me);
    if (p1 && p2) {
        fact("lock_twice", "distinct", p1 != p2);
        p1[0] = 0x55;
        fact("lock_twice", "shared_first_to_second", p2[0] == 0x55);
        p2[15] = 0x66;
        fact("lock_twice", "shared_second_to_first", p1[15] == 0x66);
    }
    do_lock("lock_null", NULL, me);
    do_lock("lock_unknown", UNKNOWN_HANDLE, me);

    /* unlock: a pointer inside a view unmaps that whole view; the view is gone afterwards. */
    if (p1) {
        do_unlock("unlock_interior", p1 + 8);
        do_unlock("unlock_interior_view_gone", p1);
    }
    if (p2) {
        do_unlock("unlock_valid", p2);
        do_unlock("unlock_twice", p2);
    }
    do_unlock("unlock_null", NULL);
    int on_stack = 0;
    do_unlock("unlock_stack", &on_stack);
    void *on_heap = malloc(64);
    do_unlock("unlock_heap", on_heap);
    free(on_heap);

    /* free */
    do_free("free_valid", h, me);
    do_lock("lock_after_free", h, me);
    do_free("free_twice", h, me);
    do_free("free_null", NULL, me);
    do_free("free_unknown", UNKNOWN_HANDLE, me);
}

static void survive_cases(void)
{
    HANDLE h = do_alloc("survive_alloc", data16, sizeof data16, me);
    unsigned char *p = do_lock("survive_lock", h, me);
    do_free("survive_free", h, me);
    if (p) {
        fact("survive_view", "readable", is_data16(p));
        p[3] = 0x99;
        fact("survive_view", "writable", p[3] == 0x99);
        do_unlock("survive_unlock", p);
    }
}

static void map_cases(void)
{
    HANDLE h = do_alloc("map_alloc", data16, sizeof data16, me);

    HANDLE hn = do_map("map_own_to_own", h, me, me, FILE_MAP_ALL_ACCESS, 0);
    if (hn) {
        fact("map_own_to_own", "new_value", hn != h);
        unsigned char *pn = do_lock("map_own_to_own_lock_new", hn, me);
        unsigned char *po = do_lock("map_own_to_own_lock_old", h, me);
        if (pn && po) {
            fact("map_own_to_own", "same_data", is_data16(pn));
            pn[1] = 0x77;
            fact("map_own_to_own", "shared", po[1] == 0x77);
            po[1] = data16[1];
        }
        if (pn)
            p_unlock(pn);
        if (po)
            p_unlock(po);
        do_free("map_own_to_own_free_new", hn, me);
        /* the original stays open */
        unsigned char *again = do_lock("map_own_to_own_lock_old_after_free_new", h, me);
        if (again)
            p_unlock(again);
    }

    do_map("map_null", NULL, me, me, FILE_MAP_ALL_ACCESS, 0);
    do_map("map_unknown", UNKNOWN_HANDLE, me, me, FILE_MAP_ALL_ACCESS, 0);

    HANDLE hs = do_map("map_same_access", h, me, me, 0, DUPLICATE_SAME_ACCESS);
    if (hs)
        do_free("map_same_access_free", hs, me);

    HANDLE h0 = do_map("map_access0", h, me, me, 0, 0);
    if (h0) {
        unsigned char *p = do_lock("map_access0_lock", h0, me);
        if (p) {
            fact("map_access0_lock", "same_data", is_data16(p));
            do_unlock("map_access0_unlock", p);
        }
        do_free("map_access0_free", h0, me);
    }

    /* DUPLICATE_CLOSE_SOURCE: Wine hands the freed value straight back, shalloc never does, so
     * "the source is closed" is: the new value is the old one, or the old value no longer locks. */
    HANDLE hc = do_map("map_close_source", h, me, me, FILE_MAP_ALL_ACCESS, DUPLICATE_CLOSE_SOURCE);
    if (hc) {
        int closed = 1;
        if (hc != h) {
            void *p = p_lock(h, me);
            closed = p == NULL;
            if (p)
                p_unlock(p);
        }
        fact("map_close_source", "source_closed", closed);
        unsigned char *p = do_lock("map_close_source_lock_new", hc, me);
        if (p) {
            fact("map_close_source_lock_new", "same_data", is_data16(p));
            p_unlock(p);
        }
        do_free("map_close_source_free_new", hc, me);
    } else {
        do_free("map_alloc_free", h, me);
    }
}

static void pid_cases(void)
{
    do_alloc("alloc_pid0", data16, sizeof data16, 0);
    do_alloc("alloc_no_such_pid", data16, sizeof data16, NO_SUCH_PID);

    HANDLE h = do_alloc("pid_alloc", data16, sizeof data16, me);
    unsigned char *p = do_lock("lock_pid0", h, 0);
    if (p)
        p_unlock(p);
    p = do_lock("lock_no_such_pid", h, NO_SUCH_PID);
    if (p)
        p_unlock(p);
    do_lock("lock_null_pid0", NULL, 0);

    do_free("free_pid0", h, 0);
    do_free("free_no_such_pid", h, NO_SUCH_PID);
    do_free("free_null_pid0", NULL, 0);
    /* the failed frees above left the handle open */
    p = do_lock("pid_lock_still_open", h, me);
    if (p)
        p_unlock(p);

    do_map("map_src_pid0", h, 0, me, FILE_MAP_ALL_ACCESS, 0);
    do_map("map_dst_pid0", h, me, 0, FILE_MAP_ALL_ACCESS, 0);
    do_map("map_src_no_such_pid", h, NO_SUCH_PID, me, FILE_MAP_ALL_ACCESS, 0);
    do_map("map_dst_no_such_pid", h, me, NO_SUCH_PID, FILE_MAP_ALL_ACCESS, 0);

    do_free("pid_free", h, me);
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (!load_functions()) {
        fprintf(stderr, "differential: shlwapi ordinals 7..11 not found\n");
        return 2;
    }
    me = own_pid();
    for (int i = 0; i < 16; i++)
        data16[i] = (unsigned char)(0xA0 + i);

    alloc_cases();
    lock_cases();
    survive_cases();
    map_cases();
    pid_cases();
    printf("done\n");
    return 0;
}
