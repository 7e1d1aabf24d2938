/*
 * The calls on the caller's own table: alloc, lock, unlock, free, map, size, read-only views, and
 * what unlock and size do with pointers that are not views.
 *
 * Usage: own_table CASE
 */

#include "check.h"

#include <dlfcn.h>
#include <sys/mman.h>

static size_t page(void)
{
    return (size_t)sysconf(_SC_PAGESIZE);
}

/* Whether [p, p + len) is mapped at all (msync fails with ENOMEM on unmapped memory). */
static int is_mapped(const void *p, size_t len)
{
    uintptr_t start = (uintptr_t)p & ~(uintptr_t)(page() - 1);
    return msync((void *)start, len, MS_ASYNC) == 0;
}

/* Where SHAllocShared came from: libshalloc.so.0 when linked dynamically, the program itself when
 * linked statically. */
CASE(linkage)
{
    Dl_info info;
    int found = dladdr((void *)(uintptr_t)&SHAllocShared, &info);
    CHECK(found != 0 && info.dli_fname != NULL, found, "dladdr finds SHAllocShared");
    printf("SHAllocShared is in %s\n", info.dli_fname);
    DWORD me = self_pid();
    HANDLE h = CALL(SHAllocShared("linked", 7, me));
    EXPECT_OK(h != NULL, h, "alloc works in this build");
    char *p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL && memcmp(p, "linked", 7) == 0, p, "lock sees the bytes");
    BOOL r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "free");
}

CASE(basics)
{
    DWORD me = self_pid();
    char data[] = "hello, shalloc";
    HANDLE h = CALL(SHAllocShared(data, sizeof data, me));
    EXPECT_OK(h != NULL, h, "alloc %zu bytes into the own table", sizeof data);
    CHECK(HVAL(h) < 0x80000000ul && h != (HANDLE)-1, h, "the handle %#lx is below 2^31, not -1",
          HVAL(h));

    /* The block is a copy: changing the source afterwards changes nothing. */
    data[0] = 'J';
    char *p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL, p, "lock the new handle");
    CHECK(p != data, p, "the view is not the source buffer");
    CHECK(memcmp(p, "hello, shalloc", sizeof data) == 0, p[0], "the view holds the bytes copied at alloc");
    SIZE_T size = CALL(SHGetSizeShared(p));
    EXPECT_OK(size == sizeof data, size, "SHGetSizeShared gives the block's size");

    /* Writes through a view stay in the block. */
    memcpy(p, "HELLO", 5);
    BOOL r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock the view");
    char *q = CALL(SHLockShared(h, me));
    EXPECT_OK(q != NULL, q, "lock the handle again");
    CHECK(memcmp(q, "HELLO, shalloc", sizeof data) == 0, q[0], "the second view sees what was written through the first");
    r = CALL(SHUnlockShared(q));
    EXPECT_OK(r == TRUE, r, "unlock the second view");

    r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "free the handle");
    p = CALL(SHLockShared(h, me));
    EXPECT_ERR(p == NULL, p, ERROR_INVALID_HANDLE, "lock after free fails with ERROR_INVALID_HANDLE");

    /* Exactly dwSize bytes are copied. */
    const char longer[] = "0123456789abcdef";
    h = CALL(SHAllocShared(longer, 5, me));
    EXPECT_OK(h != NULL, h, "alloc the first 5 bytes of a longer buffer");
    p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL, p, "lock it");
    size = CALL(SHGetSizeShared(p));
    EXPECT_OK(size == 5, size, "its size is 5");
    CHECK(memcmp(p, "01234", 5) == 0, p[0], "it holds those 5 bytes");
    r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "free");
}

CASE(zero_size)
{
    DWORD me = self_pid();
    HANDLE h = CALL(SHAllocShared("ignored", 0, me));
    EXPECT_OK(h != NULL, h, "alloc of 0 bytes (with data) gives a handle");
    HANDLE hz = CALL(SHAllocShared(NULL, 0, me));
    EXPECT_OK(hz != NULL && hz != h, hz, "alloc of 0 bytes (NULL data) gives another handle");
    void *p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL, p, "lock of an empty block gives a non-NULL pointer");
    void *q = CALL(SHLockShared(h, me));
    EXPECT_OK(q != NULL && q != p, q, "a second lock of it gives another non-NULL pointer");
    void *z = CALL(SHLockShared(hz, me));
    EXPECT_OK(z != NULL && z != p && z != q, z, "lock of the NULL-data empty block");
    SIZE_T size = CALL(SHGetSizeShared(p));
    EXPECT_OK(size == 0, size, "SHGetSizeShared of an empty view is 0 and sets no error");
    BOOL r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock the first empty view");
    r = CALL(SHUnlockShared(q));
    EXPECT_OK(r == TRUE, r, "unlock the second empty view");
    r = CALL(SHUnlockShared(z));
    EXPECT_OK(r == TRUE, r, "unlock the third empty view");
    r = CALL(SHUnlockShared(p));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_ADDRESS, "an empty view cannot be unlocked twice");
    r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "free of an empty block's handle returns TRUE");
    r = CALL(SHFreeShared(hz, me));
    EXPECT_OK(r == TRUE, r, "free of the other empty block's handle returns TRUE");
}

CASE(null_data)
{
    DWORD me = self_pid();
    const DWORD n = 3 * 4096 + 123;
    HANDLE h = CALL(SHAllocShared(NULL, n, me));
    EXPECT_OK(h != NULL, h, "alloc of %u bytes with NULL data", (unsigned)n);
    unsigned char *p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL, p, "lock it");
    SIZE_T size = CALL(SHGetSizeShared(p));
    EXPECT_OK(size == n, size, "its size is %u", (unsigned)n);
    size_t nonzero = 0;
    for (size_t i = 0; i < n; i++) {
        nonzero += p[i] != 0;
    }
    CHECK(nonzero == 0, nonzero, "all %u bytes are zero", (unsigned)n);
    BOOL r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "free");
}

CASE(two_views)
{
    DWORD me = self_pid();
    static char data[8192];
    for (size_t i = 0; i < sizeof data; i++) {
        data[i] = (char)('a' + i % 26);
    }
    HANDLE h = CALL(SHAllocShared(data, sizeof data, me));
    EXPECT_OK(h != NULL, h, "alloc 8192 bytes");
    char *p1 = CALL(SHLockShared(h, me));
    EXPECT_OK(p1 != NULL, p1, "first lock");
    char *p2 = CALL(SHLockShared(h, me));
    EXPECT_OK(p2 != NULL, p2, "second lock");
    CHECK(p1 != p2, p2, "the two locks give distinct addresses (%p, %p)", (void *)p1, (void *)p2);
    CHECK(memcmp(p1, data, sizeof data) == 0 && memcmp(p2, data, sizeof data) == 0, 0,
          "both views hold the data");
    p1[100] = 'X';
    CHECK(p2[100] == 'X', p2[100], "a write through the first view is seen through the second");
    p2[8000] = 'Y';
    CHECK(p1[8000] == 'Y', p1[8000], "a write through the second view is seen through the first");
    BOOL r = CALL(SHUnlockShared(p1));
    EXPECT_OK(r == TRUE, r, "unlock the first view");
    CHECK(p2[100] == 'X' && p2[0] == 'a', p2[0], "the second view stays readable after the first is unlocked");
    p2[1] = 'Z';
    char *p3 = CALL(SHLockShared(h, me));
    EXPECT_OK(p3 != NULL && p3 != p2, p3, "a third lock");
    CHECK(p3[1] == 'Z' && p3[100] == 'X' && p3[8000] == 'Y', p3[1], "the third view sees every write");
    r = CALL(SHUnlockShared(p2));
    EXPECT_OK(r == TRUE, r, "unlock the second view");
    r = CALL(SHUnlockShared(p3));
    EXPECT_OK(r == TRUE, r, "unlock the third view");
    r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "free");
}

CASE(free_keeps_views)
{
    DWORD me = self_pid();
    HANDLE h = CALL(SHAllocShared("still here", 11, me));
    EXPECT_OK(h != NULL, h, "alloc");
    char *p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL, p, "lock a first view");
    char *q = CALL(SHLockShared(h, me));
    EXPECT_OK(q != NULL, q, "lock a second view");
    BOOL r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "free the handle while two views are live");
    CHECK(memcmp(p, "still here", 11) == 0, p[0], "the first view is readable after free");
    memcpy(p, "STILL", 5);
    CHECK(memcmp(p, "STILL here", 11) == 0, p[0], "the first view is writable after free");
    CHECK(memcmp(q, "STILL here", 11) == 0, q[0], "the second view sees that write after free");
    SIZE_T size = CALL(SHGetSizeShared(q));
    EXPECT_OK(size == 11, size, "SHGetSizeShared still works on a view of a freed handle");
    r = CALL(SHFreeShared(h, me));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_HANDLE, "a second free of the handle fails with ERROR_INVALID_HANDLE");
    void *again = CALL(SHLockShared(h, me));
    EXPECT_ERR(again == NULL, again, ERROR_INVALID_HANDLE, "the freed handle cannot be locked");
    r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock the first view");
    CHECK(memcmp(q, "STILL here", 11) == 0, q[0], "the second view outlives the first");
    r = CALL(SHUnlockShared(q));
    EXPECT_OK(r == TRUE, r, "unlock the second view");
    r = CALL(SHFreeShared(h, me));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_HANDLE, "a third free still fails with ERROR_INVALID_HANDLE");
}

static int cmp_handles(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (HANDLE const *)a, y = (uintptr_t) * (HANDLE const *)b;
    return x < y ? -1 : x > y;
}

CASE(handle_values)
{
    DWORD me = self_pid();
    enum { N = 64 };
    HANDLE hs[N + 1];
    for (int i = 0; i < N; i++) {
        hs[i] = CALL(SHAllocShared(&i, sizeof i, me));
        quiet = 1;
        EXPECT_OK(hs[i] != NULL, hs[i], "alloc #%d", i);
        CHECK(HVAL(hs[i]) < 0x80000000ul, hs[i], "handle #%d is below 2^31", i);
        CHECK(hs[i] != (HANDLE)-1, hs[i], "handle #%d is not INVALID_HANDLE_VALUE", i);
        quiet = 0;
    }
    CHECK(1, 0, "%d handles: non-NULL, below 2^31, not -1", N);
    HANDLE sorted[N];
    memcpy(sorted, hs, sizeof sorted);
    qsort(sorted, N, sizeof sorted[0], cmp_handles);
    int dups = 0;
    for (int i = 1; i < N; i++) {
        dups += sorted[i] == sorted[i - 1];
    }
    CHECK(dups == 0, dups, "the %d handles are distinct", N);

    /* A freed value is not handed out again soon: a stale value fails instead of reaching another
     * block. */
    HANDLE stale = hs[0];
    BOOL r = CALL(SHFreeShared(stale, me));
    EXPECT_OK(r == TRUE, r, "free handle %#lx", HVAL(stale));
    int reused = 0;
    for (int i = 0; i < 200; i++) {
        HANDLE h = CALL(SHAllocShared("x", 1, me));
        quiet = 1;
        EXPECT_OK(h != NULL, h, "alloc after free #%d", i);
        reused += h == stale;
        r = CALL(SHFreeShared(h, me));
        EXPECT_OK(r == TRUE, r, "free after free #%d", i);
        quiet = 0;
    }
    CHECK(reused == 0, reused, "200 allocs after a free never reuse the freed value");
    void *p = CALL(SHLockShared(stale, me));
    EXPECT_ERR(p == NULL, p, ERROR_INVALID_HANDLE, "the stale value still fails with ERROR_INVALID_HANDLE");
    for (int i = 1; i < N; i++) {
        int *v = CALL(SHLockShared(hs[i], me));
        quiet = 1;
        EXPECT_OK(v != NULL && *v == i, v, "handle #%d still reaches its own block", i);
        r = CALL(SHUnlockShared(v));
        EXPECT_OK(r == TRUE, r, "unlock #%d", i);
        r = CALL(SHFreeShared(hs[i], me));
        EXPECT_OK(r == TRUE, r, "free #%d", i);
        quiet = 0;
    }
    CHECK(1, 0, "every other handle still reaches its own block, then frees");
}

CASE(map_handle)
{
    DWORD me = self_pid();
    HANDLE h = CALL(SHAllocShared("map me", 7, me));
    EXPECT_OK(h != NULL, h, "alloc");
    HANDLE h2 = CALL(SHMapHandle(h, me, me, 0xf001f /* FILE_MAP_ALL_ACCESS */, 0));
    EXPECT_OK(h2 != NULL, h2, "SHMapHandle own -> own");
    CHECK(h2 != h, h2, "the new handle %#lx differs from the original %#lx", HVAL(h2), HVAL(h));
    char *p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL, p, "lock the original");
    char *q = CALL(SHLockShared(h2, me));
    EXPECT_OK(q != NULL && q != p, q, "lock the duplicate");
    CHECK(memcmp(q, "map me", 7) == 0, q[0], "the duplicate's view holds the bytes");
    p[0] = 'M';
    CHECK(q[0] == 'M', q[0], "both handles lock the same bytes");

    HANDLE h3 = CALL(SHMapHandle(h, me, me, 0, 0));
    EXPECT_OK(h3 != NULL && h3 != h && h3 != h2, h3, "SHMapHandle with access 0 works");
    BOOL r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "free the original");
    char *v = CALL(SHLockShared(h2, me));
    EXPECT_OK(v != NULL && v[0] == 'M', v, "the duplicate stays valid after the original is freed");
    r = CALL(SHUnlockShared(v));
    EXPECT_OK(r == TRUE, r, "unlock");

    HANDLE h4 = CALL(SHMapHandle(h3, me, me, 0, DUPLICATE_CLOSE_SOURCE));
    EXPECT_OK(h4 != NULL && h4 != h3, h4, "SHMapHandle with DUPLICATE_CLOSE_SOURCE");
    v = CALL(SHLockShared(h3, me));
    EXPECT_ERR(v == NULL, v, ERROR_INVALID_HANDLE, "DUPLICATE_CLOSE_SOURCE closed the source");
    r = CALL(SHFreeShared(h3, me));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_HANDLE, "the closed source cannot be freed");
    v = CALL(SHLockShared(h4, me));
    EXPECT_OK(v != NULL && memcmp(v, "Map me", 7) == 0, v, "the moved handle reaches the block");
    r = CALL(SHUnlockShared(v));
    EXPECT_OK(r == TRUE, r, "unlock");

    /* The original handle stays valid after a plain SHMapHandle. */
    HANDLE h5 = CALL(SHMapHandle(h4, me, me, 0, 0));
    EXPECT_OK(h5 != NULL, h5, "duplicate once more");
    v = CALL(SHLockShared(h4, me));
    EXPECT_OK(v != NULL, v, "the source of a plain SHMapHandle stays valid");
    r = CALL(SHUnlockShared(v));
    EXPECT_OK(r == TRUE, r, "unlock");

    HANDLE bad = CALL(SHMapHandle(h, me, me, 0, 0));
    EXPECT_ERR(bad == NULL, bad, ERROR_INVALID_HANDLE, "SHMapHandle of a freed handle fails with ERROR_INVALID_HANDLE");
    bad = CALL(SHMapHandle(AS_HANDLE(0x7ffffffe), me, me, 0, 0));
    EXPECT_ERR(bad == NULL, bad, ERROR_INVALID_HANDLE, "SHMapHandle of an unknown handle fails with ERROR_INVALID_HANDLE");
    bad = CALL(SHMapHandle(h, me, me, 0, DUPLICATE_CLOSE_SOURCE));
    EXPECT_ERR(bad == NULL, bad, ERROR_INVALID_HANDLE, "SHMapHandle of a freed handle with DUPLICATE_CLOSE_SOURCE");
    bad = CALL(SHMapHandle(NULL, me, me, 0, 0));
    EXPECT_OK(bad == NULL, bad, "SHMapHandle(NULL) returns NULL and leaves the last error");

    r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHUnlockShared(q));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHFreeShared(h2, me));
    EXPECT_OK(r == TRUE, r, "free the duplicate");
    r = CALL(SHFreeShared(h4, me));
    EXPECT_OK(r == TRUE, r, "free the moved handle");
    r = CALL(SHFreeShared(h5, me));
    EXPECT_OK(r == TRUE, r, "free the last duplicate");
}

CASE(read_only)
{
    DWORD me = self_pid();
    static char data[4096 + 100];
    for (size_t i = 0; i < sizeof data; i++) {
        data[i] = (char)(i * 7);
    }
    HANDLE h = CALL(SHAllocShared(data, sizeof data, me));
    EXPECT_OK(h != NULL, h, "alloc");
    volatile char *ro = CALL(SHLockSharedEx(h, me, FALSE));
    EXPECT_OK(ro != NULL, ro, "SHLockSharedEx(bWrite = FALSE)");
    CHECK(memcmp((const char *)ro, data, sizeof data) == 0, ro[0], "the read-only view holds the bytes");
    SIZE_T size = CALL(SHGetSizeShared((const void *)ro));
    EXPECT_OK(size == sizeof data, size, "SHGetSizeShared of a read-only view");
    char *rw = CALL(SHLockSharedEx(h, me, TRUE));
    EXPECT_OK(rw != NULL && rw != (char *)ro, rw, "SHLockSharedEx(bWrite = TRUE)");
    rw[10] = 'W';
    rw[4100] = 'V';
    CHECK(ro[10] == 'W' && ro[4100] == 'V', ro[10], "the read-only view sees writes through a writable one");

    /* A write through the read-only view (inherited by a forked child) faults. */
    pid_t pid = fork_child("child (write through read-only view)");
    if (pid == 0) {
        no_core_dumps();
        ro[0] = 'x';
        _exit(0); /* not reached */
    }
    int status = wait_status(pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV, status,
          "a write through the read-only view killed the child with SIGSEGV");

    /* A child's own read-only lock faults too, on the second page. */
    pid = fork_child("child (own read-only lock)");
    if (pid == 0) {
        volatile char *mine = CALL(SHLockSharedEx(h, me, FALSE));
        EXPECT_OK(mine != NULL && mine[4100] == 'V', mine, "lock the parent's handle read-only");
        no_core_dumps();
        mine[4100] = 'x';
        _exit(0); /* not reached */
    }
    status = wait_status(pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV, status,
          "a write through the child's own read-only view killed it with SIGSEGV");

    /* The control: a write through a writable view does not fault. */
    pid = fork_child("child (write through writable view)");
    if (pid == 0) {
        char *mine = CALL(SHLockSharedEx(h, me, TRUE));
        EXPECT_OK(mine != NULL, mine, "lock the parent's handle writable");
        mine[0] = 'C';
        child_done();
    }
    EXPECT_CHILD_OK(pid, "a write through a writable view does not fault");
    CHECK(ro[0] == 'C' && ro[4100] == 'V', ro[0], "the read-only view sees the child's write, and no faulting write landed");

    BOOL r = CALL(SHUnlockShared((void *)ro));
    EXPECT_OK(r == TRUE, r, "unlock the read-only view");
    r = CALL(SHUnlockShared(rw));
    EXPECT_OK(r == TRUE, r, "unlock the writable view");
    r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "free");
}

CASE(unlock_rules)
{
    DWORD me = self_pid();
    size_t pg = page();
    BOOL r = CALL(SHUnlockShared(NULL));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_ADDRESS, "unlock of NULL fails with ERROR_INVALID_ADDRESS");
    int on_stack = 42;
    r = CALL(SHUnlockShared(&on_stack));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_ADDRESS, "unlock of a stack pointer fails with ERROR_INVALID_ADDRESS");
    char *heap = malloc(100);
    CHECK(heap != NULL, heap, "malloc");
    r = CALL(SHUnlockShared(heap));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_ADDRESS, "unlock of a heap pointer fails with ERROR_INVALID_ADDRESS");
    heap[99] = 1;
    free(heap);
    r = CALL(SHUnlockShared((void *)(uintptr_t)1));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_ADDRESS, "unlock of address 1 fails with ERROR_INVALID_ADDRESS");
    char *other = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(other != MAP_FAILED, other, "an anonymous mapping of our own");
    r = CALL(SHUnlockShared(other));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_ADDRESS, "unlock of a mapping shalloc did not make fails");
    other[0] = 1;
    CHECK(is_mapped(other, pg) && other[0] == 1, other[0], "that mapping is untouched");
    munmap(other, pg);

    HANDLE h = CALL(SHAllocShared(NULL, (DWORD)(3 * pg), me));
    EXPECT_OK(h != NULL, h, "alloc a 3-page block");
    HANDLE g = CALL(SHAllocShared("neighbour", 10, me));
    EXPECT_OK(g != NULL, g, "alloc another block");
    char *p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL, p, "lock the 3-page block");
    char *q = CALL(SHLockShared(g, me));
    EXPECT_OK(q != NULL, q, "lock the other block");
    p[2 * pg + 5] = 'e';

    r = CALL(SHUnlockShared(p + 8));
    int gone = !is_mapped(p, pg) && !is_mapped(p + pg, pg) && !is_mapped(p + 2 * pg, pg);
    EXPECT_OK(r == TRUE, r, "unlock of an interior pointer (ptr + 8) returns TRUE");
    CHECK(gone, gone, "it unmapped all 3 pages of the view");
    r = CALL(SHUnlockShared(p));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_ADDRESS, "unlock of the base afterwards fails with ERROR_INVALID_ADDRESS");
    r = CALL(SHUnlockShared(p + 8));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_ADDRESS, "unlock of the interior pointer again fails");
    CHECK(memcmp(q, "neighbour", 10) == 0, q[0], "the other view is untouched by all this");

    p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL && p[2 * pg + 5] == 'e', p, "lock the 3-page block again: the write is kept");
    r = CALL(SHUnlockShared(p + 3 * pg - 1));
    gone = !is_mapped(p, pg);
    EXPECT_OK(r == TRUE, r, "unlock through the view's last byte");
    CHECK(gone, gone, "it unmapped the view");
    r = CALL(SHUnlockShared(q));
    EXPECT_OK(r == TRUE, r, "unlock the other view");
    r = CALL(SHUnlockShared(q));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_ADDRESS, "unlock of an already unlocked pointer fails with ERROR_INVALID_ADDRESS");
    r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "free");
    r = CALL(SHFreeShared(g, me));
    EXPECT_OK(r == TRUE, r, "free");
}

CASE(size_rules)
{
    DWORD me = self_pid();
    HANDLE h = CALL(SHAllocShared(NULL, 5000, me));
    EXPECT_OK(h != NULL, h, "alloc 5000 bytes");
    char *p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL, p, "lock");
    SIZE_T s = CALL(SHGetSizeShared(p));
    EXPECT_OK(s == 5000, s, "SHGetSizeShared of the view's start is 5000");
    s = CALL(SHGetSizeShared(p + 1));
    EXPECT_ERR(s == 0, s, ERROR_INVALID_ADDRESS, "SHGetSizeShared of an interior pointer: 0, ERROR_INVALID_ADDRESS");
    s = CALL(SHGetSizeShared(NULL));
    EXPECT_ERR(s == 0, s, ERROR_INVALID_ADDRESS, "SHGetSizeShared(NULL): 0, ERROR_INVALID_ADDRESS");
    int on_stack = 0;
    s = CALL(SHGetSizeShared(&on_stack));
    EXPECT_ERR(s == 0, s, ERROR_INVALID_ADDRESS, "SHGetSizeShared of a stack pointer: 0, ERROR_INVALID_ADDRESS");
    BOOL r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock");
    s = CALL(SHGetSizeShared(p));
    EXPECT_ERR(s == 0, s, ERROR_INVALID_ADDRESS, "SHGetSizeShared of an unlocked view: 0, ERROR_INVALID_ADDRESS");
    r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "free");
}

static const struct test_case cases[] = {
    {"linkage", linkage},
    {"basics", basics},
    {"zero_size", zero_size},
    {"null_data", null_data},
    {"two_views", two_views},
    {"free_keeps_views", free_keeps_views},
    {"handle_values", handle_values},
    {"map_handle", map_handle},
    {"read_only", read_only},
    {"unlock_rules", unlock_rules},
    {"size_rules", size_rules},
};

int main(int argc, char **argv)
{
    return RUN_CASES(cases);
}
