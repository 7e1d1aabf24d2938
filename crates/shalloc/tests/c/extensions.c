/* shalloc's C extensions beyond Windows: frozen blocks and in-place fill. */
#include "check.h"

#include <sys/mman.h>

static const char ICE[] = "frozen solid";

CASE(frozen)
{
    DWORD me = self_pid();
    HANDLE h = CALL(shalloc_alloc_frozen(ICE, sizeof ICE, me));
    EXPECT_OK(h != NULL, h, "shalloc_alloc_frozen");

    void *w = CALL(SHLockShared(h, me));
    EXPECT_ERR(w == NULL, w, ERROR_ACCESS_DENIED, "a writable lock of a frozen block is denied");

    char *r = CALL(SHLockSharedEx(h, me, FALSE));
    EXPECT_OK(r != NULL, r, "a read-only lock works");
    CHECK(memcmp(r, ICE, sizeof ICE) == 0, r, "it holds the data");
    BOOL frozen = CALL(shalloc_is_frozen(r));
    EXPECT_OK(frozen == TRUE, frozen, "shalloc_is_frozen is TRUE");
    frozen = CALL(shalloc_is_frozen(r + 3));
    EXPECT_OK(frozen == TRUE, frozen, "also for a pointer inside the view");

    int rc = mprotect(r, 4096, PROT_READ | PROT_WRITE);
    CHECK(rc != 0 && errno == EACCES, rc, "mprotect cannot make the view writable");

    pid_t child = fork_child("writer");
    if (child == 0) {
        no_core_dumps();
        r[0] = 'X'; /* must fault */
        _exit(0);
    }
    int status = wait_status(child);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV, status, "a write through the view faults");
    CHECK(memcmp(r, ICE, sizeof ICE) == 0, r, "and changed nothing");

    BOOL ok = CALL(SHUnlockShared(r));
    EXPECT_OK(ok == TRUE, ok, "unlock");
    ok = CALL(SHFreeShared(h, me));
    EXPECT_OK(ok == TRUE, ok, "free");
}

CASE(not_frozen)
{
    DWORD me = self_pid();
    HANDLE h = CALL(SHAllocShared("warm", 5, me));
    EXPECT_OK(h != NULL, h, "SHAllocShared");
    char *p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL, p, "lock");
    BOOL frozen = CALL(shalloc_is_frozen(p));
    EXPECT_OK(frozen == FALSE, frozen, "an ordinary block is not frozen");
    int local = 0;
    frozen = CALL(shalloc_is_frozen(&local));
    EXPECT_ERR(frozen == FALSE, frozen, ERROR_INVALID_ADDRESS, "a pointer in no view");
    SHUnlockShared(p);
    SHFreeShared(h, me);
}

struct fill_state {
    int calls;
    SIZE_T seen_size;
    int was_zero;
};

static BOOL fill_pattern(LPVOID buffer, SIZE_T size, LPVOID context)
{
    struct fill_state *st = context;
    unsigned char *b = buffer;
    st->calls++;
    st->seen_size = size;
    st->was_zero = 1;
    for (SIZE_T i = 0; i < size; i++) {
        if (b[i] != 0) {
            st->was_zero = 0;
        }
        b[i] = (unsigned char)(i * 7 + 1);
    }
    return TRUE;
}

static BOOL fill_refuse(LPVOID buffer, SIZE_T size, LPVOID context)
{
    (void)buffer;
    (void)size;
    ((struct fill_state *)context)->calls++;
    return FALSE;
}

CASE(alloc_with)
{
    DWORD me = self_pid();
    const SIZE_T size = 1 << 20;
    for (int frozen = 0; frozen <= 1; frozen++) {
        struct fill_state st = {0, 0, 0};
        HANDLE h = CALL(shalloc_alloc_with((DWORD)size, me, frozen ? TRUE : FALSE, fill_pattern, &st));
        EXPECT_OK(h != NULL, h, "shalloc_alloc_with (frozen %d)", frozen);
        CHECK(st.calls == 1 && st.seen_size == size, st.calls, "the fill ran once over the whole block");
        CHECK(st.was_zero, st.was_zero, "the buffer started zeroed");
        unsigned char *p = CALL(SHLockSharedEx(h, me, FALSE));
        EXPECT_OK(p != NULL, p, "lock");
        int same = 1;
        for (SIZE_T i = 0; i < size; i++) {
            if (p[i] != (unsigned char)(i * 7 + 1)) {
                same = 0;
            }
        }
        CHECK(same, same, "the block holds what the fill wrote");
        CHECK(SHGetSizeShared(p) == size, SHGetSizeShared(p), "its size");
        CHECK(shalloc_is_frozen(p) == (frozen ? TRUE : FALSE), frozen, "frozen as asked");
        SHUnlockShared(p);
        SHFreeShared(h, me);
    }

    struct fill_state st = {0, 0, 0};
    HANDLE h = CALL(shalloc_alloc_with(64, me, FALSE, fill_refuse, &st));
    EXPECT_ERR(h == NULL && st.calls == 1, h, ERROR_CANCELLED, "a fill that returns FALSE makes no block");
    h = CALL(shalloc_alloc_with(64, me, FALSE, NULL, NULL));
    EXPECT_ERR(h == NULL, h, ERROR_INVALID_PARAMETER, "a NULL fill function");
    h = CALL(shalloc_alloc_with(0, me, FALSE, fill_pattern, &st));
    EXPECT_OK(h != NULL, h, "an empty block with a fill");
    SHFreeShared(h, me);
}

static const struct test_case cases[] = {
    {"frozen", frozen},
    {"not_frozen", not_frozen},
    {"alloc_with", alloc_with},
};

int main(int argc, char **argv)
{
    return RUN_CASES(cases);
}
