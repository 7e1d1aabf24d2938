/*
 * Volume: 2,000 live handles in one table, a 64 MiB block byte for byte, and 4 threads cycling
 * alloc/lock/check/unlock/free at once.
 *
 * Usage: stress CASE
 */

#include "check.h"

#include <pthread.h>

static int cmp_handles(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (HANDLE const *)a, y = (uintptr_t) * (HANDLE const *)b;
    return x < y ? -1 : x > y;
}

static void fill_block(char *buf, size_t len, unsigned i)
{
    snprintf(buf, len, "block %u of 2000: %08x", i, i * 2654435761u);
}

CASE(many_handles)
{
    enum { N = 2000, LEN = 48 };
    DWORD me = self_pid();
    static HANDLE hs[N];
    char buf[LEN];
    quiet = 1;
    for (unsigned i = 0; i < N; i++) {
        memset(buf, 0, sizeof buf);
        fill_block(buf, sizeof buf, i);
        hs[i] = CALL(SHAllocShared(buf, LEN, me));
        EXPECT_OK(hs[i] != NULL, hs[i], "alloc #%u", i);
    }
    quiet = 0;
    CHECK(1, 0, "%d handles allocated, all live at once", N);
    static HANDLE sorted[N];
    memcpy(sorted, hs, sizeof sorted);
    qsort(sorted, N, sizeof sorted[0], cmp_handles);
    int dups = 0;
    for (int i = 1; i < N; i++) {
        dups += sorted[i] == sorted[i - 1];
    }
    CHECK(dups == 0, dups, "the %d handles are distinct", N);

    /* A sample, with all its views live at once. */
    enum { STEP = 37 };
    static char *views[N / STEP + 2];
    int nviews = 0;
    quiet = 1;
    for (unsigned k = 0; k <= N / STEP + 1; k++) {
        unsigned i = k * STEP < N ? k * STEP : N - 1;
        char *p = CALL(SHLockShared(hs[i], me));
        EXPECT_OK(p != NULL, p, "lock #%u", i);
        memset(buf, 0, sizeof buf);
        fill_block(buf, sizeof buf, i);
        CHECK(memcmp(p, buf, LEN) == 0, p[0], "handle #%u reaches its own block", i);
        SIZE_T s = CALL(SHGetSizeShared(p));
        EXPECT_OK(s == LEN, s, "size of #%u", i);
        views[nviews++] = p;
        if (i == N - 1) {
            break;
        }
    }
    quiet = 0;
    CHECK(nviews > 50, nviews, "%d sampled handles (first and last included) each reach their own block", nviews);
    quiet = 1;
    for (int v = 0; v < nviews; v++) {
        BOOL r = CALL(SHUnlockShared(views[v]));
        EXPECT_OK(r == TRUE, r, "unlock sample view %d", v);
    }
    for (unsigned i = 0; i < N; i++) {
        BOOL r = CALL(SHFreeShared(hs[i], me));
        EXPECT_OK(r == TRUE, r, "free #%u", i);
    }
    quiet = 0;
    CHECK(1, 0, "all %d handles freed", N);
    for (unsigned i = 0; i < N; i += 499) {
        void *p = CALL(SHLockShared(hs[i], me));
        EXPECT_ERR(p == NULL, p, ERROR_INVALID_HANDLE, "freed handle #%u no longer locks", i);
    }
}

CASE(big_block)
{
    const size_t n = 64u << 20;
    DWORD me = self_pid();
    unsigned char *data = malloc(n);
    CHECK(data != NULL, data, "malloc 64 MiB");
    uint32_t x = 0x12345678;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        data[i] = (unsigned char)(x >> 16);
    }
    HANDLE h = CALL(SHAllocShared(data, (DWORD)n, me));
    EXPECT_OK(h != NULL, h, "alloc a 64 MiB block");
    unsigned char *p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL, p, "lock it");
    SIZE_T size = CALL(SHGetSizeShared(p));
    EXPECT_OK(size == n, size, "its size is 64 MiB");
    size_t first_diff = n;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != data[i]) {
            first_diff = i;
            break;
        }
    }
    CHECK(first_diff == n, first_diff, "all 64 MiB are byte-exact (first difference at %zu)", first_diff);

    /* Another process sees the same 64 MiB and can change the last byte. */
    pid_t pid = fork_child("child");
    if (pid == 0) {
        unsigned char *q = CALL(SHLockSharedEx(h, me, TRUE));
        EXPECT_OK(q != NULL && q != p, q, "lock the 64 MiB block again");
        CHECK(memcmp(q, data, n) == 0, 0, "the child's view is byte-exact too");
        q[n - 1] ^= 0xff;
        child_done();
    }
    EXPECT_CHILD_OK(pid, "the child exited 0");
    CHECK(p[n - 1] == (unsigned char)(data[n - 1] ^ 0xff) && memcmp(p, data, n - 1) == 0, p[n - 1],
          "the parent sees the child's change of the last byte, and nothing else changed");
    BOOL r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "free");

    HANDLE z = CALL(SHAllocShared(NULL, (DWORD)n, me));
    EXPECT_OK(z != NULL, z, "alloc a zero-filled 64 MiB block");
    p = CALL(SHLockShared(z, me));
    EXPECT_OK(p != NULL, p, "lock it");
    size_t nonzero = 0;
    for (size_t i = 0; i < n; i++) {
        nonzero += p[i] != 0;
    }
    CHECK(nonzero == 0, nonzero, "all 64 MiB are zero");
    r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHFreeShared(z, me));
    EXPECT_OK(r == TRUE, r, "free");
    free(data);
}

enum { THREADS = 4, CYCLES = 500 };

struct worker {
    int id;
    int cycles_done;
};

static void *cycle_thread(void *arg)
{
    struct worker *w = arg;
    static _Thread_local char name[32];
    snprintf(name, sizeof name, "thread %d", w->id);
    who = name;
    quiet = 1;
    DWORD me = self_pid();
    static _Thread_local unsigned char buf[20000];
    DWORD my_code = 0x1000u + (DWORD)w->id;
    for (int c = 0; c < CYCLES; c++) {
        size_t len = 1 + ((size_t)c * 131u + (size_t)w->id * 1777u) % sizeof buf;
        for (size_t i = 0; i < len; i++) {
            buf[i] = (unsigned char)(w->id * 61 + c * 7 + i);
        }
        HANDLE h = CALL(SHAllocShared(buf, (DWORD)len, me));
        EXPECT_OK(h != NULL, h, "cycle %d: alloc %zu bytes", c, len);
        unsigned char *p = CALL(SHLockShared(h, me));
        EXPECT_OK(p != NULL, p, "cycle %d: lock", c);
        CHECK(memcmp(p, buf, len) == 0, p[0], "cycle %d: the view holds this thread's bytes", c);
        SIZE_T size = CALL(SHGetSizeShared(p));
        EXPECT_OK(size == len, size, "cycle %d: size", c);
        p[len - 1] = (unsigned char)~buf[len - 1];
        unsigned char *q = CALL(SHLockShared(h, me));
        EXPECT_OK(q != NULL && q != p, q, "cycle %d: second lock", c);
        CHECK(q[len - 1] == (unsigned char)~buf[len - 1] && memcmp(q, buf, len - 1) == 0, q[0],
              "cycle %d: the second view sees this thread's write", c);
        BOOL r = CALL(SHUnlockShared(q));
        EXPECT_OK(r == TRUE, r, "cycle %d: unlock the second view", c);
        r = CALL(SHUnlockShared(p));
        EXPECT_OK(r == TRUE, r, "cycle %d: unlock", c);
        r = CALL(SHFreeShared(h, me));
        EXPECT_OK(r == TRUE, r, "cycle %d: free", c);
        if (c % 50 == 0) {
            /* Last errors are per thread while the others run. */
            r = CALL(SHFreeShared(h, me));
            EXPECT_ERR(r == FALSE, r, ERROR_INVALID_HANDLE, "cycle %d: a second free fails", c);
            shalloc_set_last_error(my_code);
            HANDLE ok = SHAllocShared("x", 1, me);
            DWORD e = shalloc_last_error();
            CHECK(ok != NULL && e == my_code, e, "cycle %d: this thread's last error is its own", c);
            r = SHFreeShared(ok, me);
            CHECK(r == TRUE, r, "cycle %d: free", c);
        }
        w->cycles_done = c + 1;
    }
    quiet = 0;
    CHECK(w->cycles_done == CYCLES, w->cycles_done, "%d cycles of alloc/lock/check/unlock/free", CYCLES);
    return NULL;
}

CASE(threads)
{
    pthread_t ts[THREADS];
    struct worker ws[THREADS];
    for (int i = 0; i < THREADS; i++) {
        ws[i].id = i;
        ws[i].cycles_done = 0;
        int rc = pthread_create(&ts[i], NULL, cycle_thread, &ws[i]);
        CHECK(rc == 0, rc, "start thread %d", i);
    }
    int total = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(ts[i], NULL);
        total += ws[i].cycles_done;
    }
    CHECK(total == THREADS * CYCLES, total, "%d threads completed %d cycles in all", THREADS, total);
}

static const struct test_case cases[] = {
    {"many_handles", many_handles},
    {"big_block", big_block},
    {"threads", threads},
};

int main(int argc, char **argv)
{
    return RUN_CASES(cases);
}
