/*
 * The last-error rules: every failure sets the Win32 code and a message, success and the two NULL
 * cases leave them alone, the codes for unknown handles and processes, per-thread last errors, and
 * the codes of our own (no broker, too large, handle limit).
 *
 * Usage: errors CASE
 */

#include "check.h"

#include <pthread.h>
#include <sys/mman.h>

/* Process ids that name no process: beyond pid_max, 0, and values Linux can never give. */
static const DWORD no_such_pids[] = {0x7ffffff0u, 0u, 0xffffffffu, 0x80000000u};
#define N_NO_SUCH_PIDS (sizeof no_such_pids / sizeof no_such_pids[0])

CASE(last_error)
{
    DWORD me = self_pid();
    shalloc_set_last_error(1234);
    DWORD e = shalloc_last_error();
    const char *m = shalloc_last_error_message();
    CHECK(e == 1234 && m != NULL && m[0] == '\0', e, "shalloc_set_last_error sets the code and clears the message");

    /* Success leaves the last error alone, for every call. */
    HANDLE h = CALL(SHAllocShared("abc", 4, me));
    EXPECT_OK(h != NULL, h, "a successful SHAllocShared leaves the last error");
    void *p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL, p, "a successful SHLockShared leaves the last error");
    void *ro = CALL(SHLockSharedEx(h, me, FALSE));
    EXPECT_OK(ro != NULL, ro, "a successful SHLockSharedEx leaves the last error");
    SIZE_T s = CALL(SHGetSizeShared(p));
    EXPECT_OK(s == 4, s, "a successful SHGetSizeShared leaves the last error");
    HANDLE h2 = CALL(SHMapHandle(h, me, me, 0, 0));
    EXPECT_OK(h2 != NULL, h2, "a successful SHMapHandle leaves the last error");
    BOOL r = CALL(SHUnlockShared(ro));
    EXPECT_OK(r == TRUE, r, "a successful SHUnlockShared leaves the last error");
    r = CALL(SHFreeShared(h2, me));
    EXPECT_OK(r == TRUE, r, "a successful SHFreeShared leaves the last error");

    /* The two NULL cases. */
    r = CALL(SHFreeShared(NULL, me));
    EXPECT_OK(r == TRUE, r, "SHFreeShared(NULL, own pid) returns TRUE and leaves the last error");
    for (size_t i = 0; i < N_NO_SUCH_PIDS; i++) {
        r = CALL(SHFreeShared(NULL, no_such_pids[i]));
        EXPECT_OK(r == TRUE, r, "SHFreeShared(NULL, %#x) returns TRUE and leaves the last error",
                  (unsigned)no_such_pids[i]);
        HANDLE n = CALL(SHMapHandle(NULL, no_such_pids[i], me, 0, 0));
        EXPECT_OK(n == NULL, n, "SHMapHandle(NULL, %#x, own pid) returns NULL and leaves the last error",
                  (unsigned)no_such_pids[i]);
    }
    HANDLE n = CALL(SHMapHandle(NULL, me, me, 0, 0));
    EXPECT_OK(n == NULL, n, "SHMapHandle(NULL, own, own) returns NULL and leaves the last error");
    n = CALL(SHMapHandle(NULL, me, me, 0, DUPLICATE_CLOSE_SOURCE));
    EXPECT_OK(n == NULL, n, "SHMapHandle(NULL, ..., DUPLICATE_CLOSE_SOURCE) returns NULL and leaves the last error");

    /* SHLockShared(NULL) is an error, not a NULL case. */
    void *q = CALL(SHLockShared(NULL, me));
    EXPECT_ERR(q == NULL, q, ERROR_INVALID_HANDLE, "SHLockShared(NULL, own pid) fails with ERROR_INVALID_HANDLE");
    q = CALL(SHLockSharedEx(NULL, me, FALSE));
    EXPECT_ERR(q == NULL, q, ERROR_INVALID_HANDLE, "SHLockSharedEx(NULL, own pid, FALSE) fails with ERROR_INVALID_HANDLE");

    /* A failure replaces an earlier failure's code; a success after a failure keeps both the code
     * and the message. */
    r = CALL(SHUnlockShared(NULL));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_ADDRESS, "unlock(NULL) sets ERROR_INVALID_ADDRESS");
    q = SHLockShared(NULL, me);
    EXPECT_ERR(q == NULL, q, ERROR_INVALID_HANDLE, "a following SHLockShared(NULL) replaces it with ERROR_INVALID_HANDLE");
    char saved[512];
    snprintf(saved, sizeof saved, "%s", shalloc_last_error_message());
    s = SHGetSizeShared(p);
    e = shalloc_last_error();
    m = shalloc_last_error_message();
    CHECK(s == 4 && e == ERROR_INVALID_HANDLE && strcmp(m, saved) == 0, e,
          "a success after a failure keeps its code and message (\"%s\")", saved);
    printf("the message of SHLockShared(NULL): %s\n", saved);

    r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "free");
}

CASE(bad_pids)
{
    DWORD me = self_pid();
    HANDLE h = CALL(SHAllocShared("valid", 6, me));
    EXPECT_OK(h != NULL, h, "alloc a valid handle");
    for (size_t i = 0; i < N_NO_SUCH_PIDS; i++) {
        DWORD pid = no_such_pids[i];
        HANDLE a = CALL(SHAllocShared("x", 1, pid));
        EXPECT_ERR(a == NULL, a, ERROR_INVALID_PARAMETER, "SHAllocShared into pid %#x fails with ERROR_INVALID_PARAMETER", (unsigned)pid);
        a = CALL(SHAllocShared(NULL, 0, pid));
        EXPECT_ERR(a == NULL, a, ERROR_INVALID_PARAMETER, "SHAllocShared(NULL, 0) into pid %#x fails with ERROR_INVALID_PARAMETER", (unsigned)pid);
        void *p = CALL(SHLockShared(h, pid));
        EXPECT_ERR(p == NULL, p, ERROR_INVALID_PARAMETER, "SHLockShared(h, %#x) fails with ERROR_INVALID_PARAMETER", (unsigned)pid);
        p = CALL(SHLockSharedEx(h, pid, FALSE));
        EXPECT_ERR(p == NULL, p, ERROR_INVALID_PARAMETER, "SHLockSharedEx(h, %#x, FALSE) fails with ERROR_INVALID_PARAMETER", (unsigned)pid);
        BOOL r = CALL(SHFreeShared(h, pid));
        EXPECT_ERR(r == FALSE, r, ERROR_INVALID_PARAMETER, "SHFreeShared(h, %#x) fails with ERROR_INVALID_PARAMETER", (unsigned)pid);
        HANDLE m = CALL(SHMapHandle(h, pid, me, 0, 0));
        EXPECT_ERR(m == NULL, m, ERROR_INVALID_PARAMETER, "SHMapHandle from pid %#x fails with ERROR_INVALID_PARAMETER", (unsigned)pid);
        m = CALL(SHMapHandle(h, me, pid, 0, 0));
        EXPECT_ERR(m == NULL, m, ERROR_INVALID_PARAMETER, "SHMapHandle into pid %#x fails with ERROR_INVALID_PARAMETER", (unsigned)pid);
    }
    char *p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL && memcmp(p, "valid", 6) == 0, p, "the handle is still valid and whole afterwards");
    BOOL r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "free");
}

CASE(unknown_handles)
{
    DWORD me = self_pid();
    HANDLE freed = CALL(SHAllocShared("gone", 5, me));
    EXPECT_OK(freed != NULL, freed, "alloc");
    BOOL r = CALL(SHFreeShared(freed, me));
    EXPECT_OK(r == TRUE, r, "free");
    /* Values that were never handles, that are freed, and that cannot be handles at all. */
    const HANDLE unknown[] = {freed, AS_HANDLE(0x7ffffffe), AS_HANDLE(0x7fffffff), (HANDLE)-1,
                              AS_HANDLE(0x100000004ull), AS_HANDLE(0xffffffffull)};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        HANDLE h = unknown[i];
        void *p = CALL(SHLockShared(h, me));
        EXPECT_ERR(p == NULL, p, ERROR_INVALID_HANDLE, "SHLockShared(%#lx) fails with ERROR_INVALID_HANDLE", HVAL(h));
        p = CALL(SHLockSharedEx(h, me, FALSE));
        EXPECT_ERR(p == NULL, p, ERROR_INVALID_HANDLE, "SHLockSharedEx(%#lx, FALSE) fails with ERROR_INVALID_HANDLE", HVAL(h));
        r = CALL(SHFreeShared(h, me));
        EXPECT_ERR(r == FALSE, r, ERROR_INVALID_HANDLE, "SHFreeShared(%#lx) fails with ERROR_INVALID_HANDLE", HVAL(h));
        HANDLE m = CALL(SHMapHandle(h, me, me, 0, 0));
        EXPECT_ERR(m == NULL, m, ERROR_INVALID_HANDLE, "SHMapHandle(%#lx) fails with ERROR_INVALID_HANDLE", HVAL(h));
    }
}

struct thread_result {
    DWORD code_at_start;
    DWORD code_after_failure;
    DWORD code_after_main_failed;
    pthread_barrier_t *barrier;
};

static void *error_thread(void *arg)
{
    struct thread_result *res = arg;
    who = "thread";
    res->code_at_start = shalloc_last_error();
    void *p = SHLockShared(NULL, self_pid());
    EXPECT_ERR(p == NULL, p, ERROR_INVALID_HANDLE, "a failing call in the thread sets its own last error");
    res->code_after_failure = shalloc_last_error();
    pthread_barrier_wait(res->barrier); /* let main fail */
    pthread_barrier_wait(res->barrier); /* main has failed */
    res->code_after_main_failed = shalloc_last_error();
    return NULL;
}

CASE(per_thread)
{
    shalloc_set_last_error(111);
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, 2);
    struct thread_result res = {0, 0, 0, &barrier};
    pthread_t t;
    int rc = pthread_create(&t, NULL, error_thread, &res);
    CHECK(rc == 0, rc, "pthread_create");
    pthread_barrier_wait(&barrier);
    DWORD e = shalloc_last_error();
    CHECK(e == 111, e, "the thread's failure did not change main's last error");
    BOOL r = SHUnlockShared(NULL);
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_ADDRESS, "main fails with its own code");
    pthread_barrier_wait(&barrier);
    pthread_join(t, NULL);
    CHECK(res.code_at_start != 111, res.code_at_start, "a new thread does not see main's last error (it has %u)", (unsigned)res.code_at_start);
    CHECK(res.code_after_failure == ERROR_INVALID_HANDLE, res.code_after_failure, "the thread had ERROR_INVALID_HANDLE");
    CHECK(res.code_after_main_failed == ERROR_INVALID_HANDLE, res.code_after_main_failed,
          "main's failure did not change the thread's last error");
    pthread_barrier_destroy(&barrier);
}

/* Run with SHALLOC_BROKER naming no executable and an empty runtime directory. */
CASE(no_broker)
{
    DWORD me = self_pid();
    HANDLE h = CALL(SHAllocShared("x", 1, me));
    EXPECT_ERR(h == NULL, h, ERROR_SERVICE_NOT_ACTIVE, "SHAllocShared without a broker fails with ERROR_SERVICE_NOT_ACTIVE");
    void *p = CALL(SHLockShared(AS_HANDLE(0x40), me));
    EXPECT_ERR(p == NULL, p, ERROR_SERVICE_NOT_ACTIVE, "SHLockShared without a broker fails with ERROR_SERVICE_NOT_ACTIVE");
    BOOL r = CALL(SHFreeShared(AS_HANDLE(0x40), me));
    EXPECT_ERR(r == FALSE, r, ERROR_SERVICE_NOT_ACTIVE, "SHFreeShared without a broker fails with ERROR_SERVICE_NOT_ACTIVE");
    HANDLE m = CALL(SHMapHandle(AS_HANDLE(0x40), me, me, 0, 0));
    EXPECT_ERR(m == NULL, m, ERROR_SERVICE_NOT_ACTIVE, "SHMapHandle without a broker fails with ERROR_SERVICE_NOT_ACTIVE");
    r = CALL(SHFreeShared(NULL, me));
    EXPECT_OK(r == TRUE, r, "SHFreeShared(NULL) still returns TRUE and leaves the last error");
    r = CALL(SHUnlockShared(&r));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_ADDRESS, "SHUnlockShared of a non-view still fails with ERROR_INVALID_ADDRESS");
}

/* A block the system will not make: over the file-size limit, as a memfd is a file. */
CASE(too_large)
{
    DWORD me = self_pid();
    /* Start the broker first, so it does not inherit the limit. */
    HANDLE h = CALL(SHAllocShared("first", 6, me));
    EXPECT_OK(h != NULL, h, "a first alloc starts the broker");
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = {1 << 20, 1 << 20};
    int rc = setrlimit(RLIMIT_FSIZE, &lim);
    CHECK(rc == 0, rc, "limit file sizes to 1 MiB");
    HANDLE big = CALL(SHAllocShared(NULL, 4u << 20, me));
    EXPECT_ERR(big == NULL, big, ERROR_NOT_ENOUGH_MEMORY, "a zero-filled 4 MiB block fails with ERROR_NOT_ENOUGH_MEMORY");
    char *data = calloc(1, 2u << 20);
    CHECK(data != NULL, data, "calloc");
    big = CALL(SHAllocShared(data, 2u << 20, me));
    EXPECT_ERR(big == NULL, big, ERROR_NOT_ENOUGH_MEMORY, "a 2 MiB block of data fails with ERROR_NOT_ENOUGH_MEMORY");
    free(data);
    HANDLE small = CALL(SHAllocShared(NULL, 4096, me));
    EXPECT_OK(small != NULL, small, "a block under the limit still works");
    BOOL r = CALL(SHFreeShared(small, me));
    EXPECT_OK(r == TRUE, r, "free");
    r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "free");
}

/* A broker started with few descriptors holds few handles. */
CASE(handle_limit)
{
    DWORD me = self_pid();
    struct rlimit lim = {128, 128};
    int rc = setrlimit(RLIMIT_NOFILE, &lim);
    CHECK(rc == 0, rc, "limit descriptors to 128 before the broker starts");
    enum { MAX = 1000 };
    static HANDLE hs[MAX];
    int n = 0;
    HANDLE h = NULL;
    quiet = 1;
    for (; n < MAX; n++) {
        h = CALL(SHAllocShared(&n, sizeof n, me));
        if (h == NULL) {
            break;
        }
        EXPECT_OK(1, h, "alloc #%d", n);
        hs[n] = h;
    }
    quiet = 0;
    EXPECT_ERR(h == NULL && n > 0 && n < 128, h, ERROR_NO_SYSTEM_RESOURCES,
               "alloc #%d fails with ERROR_NO_SYSTEM_RESOURCES at the broker's limit", n);
    void *p = CALL(SHLockShared(hs[0], me));
    EXPECT_OK(p != NULL, p, "the handles already made still lock");
    BOOL r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHFreeShared(hs[0], me));
    EXPECT_OK(r == TRUE, r, "free one");
    h = CALL(SHAllocShared("again", 6, me));
    EXPECT_OK(h != NULL, h, "after a free, an alloc succeeds again");
    hs[0] = h;
    quiet = 1;
    for (int i = 0; i < n; i++) {
        r = CALL(SHFreeShared(hs[i], me));
        EXPECT_OK(r == TRUE, r, "free #%d", i);
    }
    quiet = 0;
    CHECK(1, 0, "freed all %d handles", n);
}

static const struct test_case cases[] = {
    {"last_error", last_error},
    {"bad_pids", bad_pids},
    {"unknown_handles", unknown_handles},
    {"per_thread", per_thread},
    {"no_broker", no_broker},
    {"too_large", too_large},
    {"handle_limit", handle_limit},
};

int main(int argc, char **argv)
{
    return RUN_CASES(cases);
}
