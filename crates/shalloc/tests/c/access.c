/*
 * Who may touch a table: another uid gets nothing (either way round), and a non-dumpable process
 * keeps others out of its table while its own calls still work.
 *
 * Usage: access CASE
 * The uid cases need root (they drop a child to uid/gid 65534); without it they print SKIP.
 */

#include "check.h"

#include <grp.h>
#include <sys/prctl.h>

#define NOBODY 65534

static const char secret[] = "the parent's block";

static void drop_to_nobody(void)
{
    int rc = setgroups(0, NULL);
    CHECK(rc == 0, rc, "setgroups(0)");
    rc = setgid(NOBODY);
    CHECK(rc == 0, rc, "setgid(%d)", NOBODY);
    rc = setuid(NOBODY);
    CHECK(rc == 0, rc, "setuid(%d)", NOBODY);
    uid_t r, e, s;
    getresuid(&r, &e, &s);
    CHECK(r == NOBODY && e == NOBODY && s == NOBODY, e, "real, effective and saved uid are all %d", NOBODY);
}

static int need_root(const char *name)
{
    if (geteuid() != 0) {
        printf("SKIP %s: needs root to change uid\n", name);
        return 0;
    }
    return 1;
}

/* A child that connected as root and then became another user can do nothing to the parent's
 * table. */
CASE(other_uid)
{
    if (!need_root("other_uid")) {
        exit(0);
    }
    DWORD me = self_pid();
    HANDLE h = CALL(SHAllocShared(secret, sizeof secret, me));
    EXPECT_OK(h != NULL, h, "alloc into the own table");
    pid_t pid = fork_child("child");
    if (pid == 0) {
        /* One successful call as root: the child has its own broker connection now. */
        char *p = CALL(SHLockShared(h, me));
        EXPECT_OK(p != NULL && strcmp(p, secret) == 0, p, "as root, lock the parent's handle");
        BOOL r = CALL(SHUnlockShared(p));
        EXPECT_OK(r == TRUE, r, "unlock");
        drop_to_nobody();
        prctl(PR_SET_DUMPABLE, 1); /* so that only the uid is different */
        p = CALL(SHLockShared(h, me));
        EXPECT_ERR(p == NULL, p, ERROR_ACCESS_DENIED, "as uid %d, lock of the parent's handle fails with ERROR_ACCESS_DENIED", NOBODY);
        p = CALL(SHLockSharedEx(h, me, FALSE));
        EXPECT_ERR(p == NULL, p, ERROR_ACCESS_DENIED, "as uid %d, a read-only lock fails with ERROR_ACCESS_DENIED", NOBODY);
        r = CALL(SHFreeShared(h, me));
        EXPECT_ERR(r == FALSE, r, ERROR_ACCESS_DENIED, "as uid %d, free in the parent's table fails with ERROR_ACCESS_DENIED", NOBODY);
        HANDLE a = CALL(SHAllocShared("intruder", 9, me));
        EXPECT_ERR(a == NULL, a, ERROR_ACCESS_DENIED, "as uid %d, alloc into the parent's table fails with ERROR_ACCESS_DENIED", NOBODY);
        HANDLE m = CALL(SHMapHandle(h, me, me, 0, 0));
        EXPECT_ERR(m == NULL, m, ERROR_ACCESS_DENIED, "as uid %d, SHMapHandle within the parent's table fails with ERROR_ACCESS_DENIED", NOBODY);
        m = CALL(SHMapHandle(h, me, me, 0, DUPLICATE_CLOSE_SOURCE));
        EXPECT_ERR(m == NULL, m, ERROR_ACCESS_DENIED, "as uid %d, SHMapHandle with DUPLICATE_CLOSE_SOURCE fails with ERROR_ACCESS_DENIED", NOBODY);
        child_done();
    }
    EXPECT_CHILD_OK(pid, "the child that became uid %d exited 0", NOBODY);
    char *p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL && strcmp(p, secret) == 0, p, "the handle is still open and unchanged");
    BOOL r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "the parent frees it");
}

/* The parent cannot touch the table of a child that became another user. */
CASE(other_uid_child_table)
{
    if (!need_root("other_uid_child_table")) {
        exit(0);
    }
    DWORD me = self_pid();
    int p2c[2], c2p[2];
    make_pipe(p2c);
    make_pipe(c2p);
    pid_t pid = fork_child("child");
    if (pid == 0) {
        close(p2c[1]);
        close(c2p[0]);
        recv_u64(p2c[0]); /* the parent allocated into this table */
        drop_to_nobody();
        prctl(PR_SET_DUMPABLE, 1); /* so that only the uid is different */
        send_u64(c2p[1], 1);
        recv_u64(p2c[0]);
        child_done();
    }
    close(p2c[0]);
    close(c2p[1]);
    DWORD child = (DWORD)pid;
    HANDLE h = CALL(SHAllocShared(secret, sizeof secret, child));
    EXPECT_OK(h != NULL, h, "while the child is root, alloc into its table works");
    HANDLE own = CALL(SHAllocShared(secret, sizeof secret, me));
    EXPECT_OK(own != NULL, own, "alloc into the own table");
    send_u64(p2c[1], 1);
    CHECK(recv_u64(c2p[0]) == 1, 0, "the child is uid %d now", NOBODY);
    HANDLE a = CALL(SHAllocShared(secret, sizeof secret, child));
    EXPECT_ERR(a == NULL, a, ERROR_ACCESS_DENIED, "alloc into the uid-%d child's table fails with ERROR_ACCESS_DENIED", NOBODY);
    void *p = CALL(SHLockShared(h, child));
    EXPECT_ERR(p == NULL, p, ERROR_ACCESS_DENIED, "lock from its table fails with ERROR_ACCESS_DENIED");
    BOOL r = CALL(SHFreeShared(h, child));
    EXPECT_ERR(r == FALSE, r, ERROR_ACCESS_DENIED, "free in its table fails with ERROR_ACCESS_DENIED");
    HANDLE m = CALL(SHMapHandle(h, child, me, 0, 0));
    EXPECT_ERR(m == NULL, m, ERROR_ACCESS_DENIED, "SHMapHandle out of its table fails with ERROR_ACCESS_DENIED");
    m = CALL(SHMapHandle(own, me, child, 0, 0));
    EXPECT_ERR(m == NULL, m, ERROR_ACCESS_DENIED, "SHMapHandle into its table fails with ERROR_ACCESS_DENIED");
    p = CALL(SHLockShared(own, me));
    EXPECT_OK(p != NULL, p, "the own handle is still open after the failed SHMapHandle");
    r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHFreeShared(own, me));
    EXPECT_OK(r == TRUE, r, "free");
    send_u64(p2c[1], 2);
    EXPECT_CHILD_OK(pid, "the child exited 0");
}

/* A non-dumpable process keeps everyone else out of its table; its own calls still work. */
CASE(nondumpable)
{
    DWORD me = self_pid();
    HANDLE hp = CALL(SHAllocShared(secret, sizeof secret, me));
    EXPECT_OK(hp != NULL, hp, "alloc into the own table");
    int p2c[2], c2p[2];
    make_pipe(p2c);
    make_pipe(c2p);
    pid_t pid = fork_child("child");
    if (pid == 0) {
        close(p2c[1]);
        close(c2p[0]);
        int rc = prctl(PR_SET_DUMPABLE, 0);
        CHECK(rc == 0 && prctl(PR_GET_DUMPABLE) == 0, rc, "the child made itself non-dumpable");
        DWORD mine = self_pid();
        HANDLE hc = CALL(SHAllocShared("the child's own", 16, mine));
        EXPECT_OK(hc != NULL, hc, "alloc into its own table works");
        char *p = CALL(SHLockShared(hc, mine));
        EXPECT_OK(p != NULL && strcmp(p, "the child's own") == 0, p, "lock from its own table works");
        BOOL r = CALL(SHUnlockShared(p));
        EXPECT_OK(r == TRUE, r, "unlock");
        HANDLE tmp = CALL(SHMapHandle(hc, mine, mine, 0, 0));
        EXPECT_OK(tmp != NULL, tmp, "SHMapHandle within its own table works");
        r = CALL(SHFreeShared(tmp, mine));
        EXPECT_OK(r == TRUE, r, "free in its own table works");
        p = CALL(SHLockShared(hp, me));
        EXPECT_OK(p != NULL && strcmp(p, secret) == 0, p, "lock from the parent's table works");
        r = CALL(SHUnlockShared(p));
        EXPECT_OK(r == TRUE, r, "unlock");
        HANDLE ha = CALL(SHAllocShared("from the non-dumpable child", 28, me));
        EXPECT_OK(ha != NULL, ha, "alloc into the parent's table works");
        HANDLE hm = CALL(SHMapHandle(hc, mine, me, 0, 0));
        EXPECT_OK(hm != NULL, hm, "SHMapHandle from its own table into the parent's works");
        send_u64(c2p[1], HVAL(hc));
        send_u64(c2p[1], HVAL(ha));
        send_u64(c2p[1], HVAL(hm));
        recv_u64(p2c[0]);
        r = CALL(SHFreeShared(hc, mine));
        EXPECT_OK(r == TRUE, r, "after the parent's attempts, its handle is still there to free");
        child_done();
    }
    close(p2c[0]);
    close(c2p[1]);
    DWORD child = (DWORD)pid;
    HANDLE hc = AS_HANDLE(recv_u64(c2p[0]));
    HANDLE ha = AS_HANDLE(recv_u64(c2p[0]));
    HANDLE hm = AS_HANDLE(recv_u64(c2p[0]));
    HANDLE a = CALL(SHAllocShared("x", 2, child));
    EXPECT_ERR(a == NULL, a, ERROR_ACCESS_DENIED, "alloc into the non-dumpable child's table fails with ERROR_ACCESS_DENIED");
    void *p = CALL(SHLockShared(hc, child));
    EXPECT_ERR(p == NULL, p, ERROR_ACCESS_DENIED, "lock from its table fails with ERROR_ACCESS_DENIED");
    p = CALL(SHLockSharedEx(hc, child, FALSE));
    EXPECT_ERR(p == NULL, p, ERROR_ACCESS_DENIED, "a read-only lock from its table fails with ERROR_ACCESS_DENIED");
    BOOL r = CALL(SHFreeShared(hc, child));
    EXPECT_ERR(r == FALSE, r, ERROR_ACCESS_DENIED, "free in its table fails with ERROR_ACCESS_DENIED");
    HANDLE m = CALL(SHMapHandle(hc, child, me, 0, 0));
    EXPECT_ERR(m == NULL, m, ERROR_ACCESS_DENIED, "SHMapHandle out of its table fails with ERROR_ACCESS_DENIED");
    m = CALL(SHMapHandle(hp, me, child, 0, 0));
    EXPECT_ERR(m == NULL, m, ERROR_ACCESS_DENIED, "SHMapHandle into its table fails with ERROR_ACCESS_DENIED");
    char *v = CALL(SHLockShared(ha, me));
    EXPECT_OK(v != NULL && strcmp(v, "from the non-dumpable child") == 0, v, "the handle it put into the parent's table works");
    r = CALL(SHUnlockShared(v));
    EXPECT_OK(r == TRUE, r, "unlock");
    v = CALL(SHLockShared(hm, me));
    EXPECT_OK(v != NULL && strcmp(v, "the child's own") == 0, v, "the handle it mapped into the parent's table works");
    r = CALL(SHUnlockShared(v));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHFreeShared(ha, me));
    EXPECT_OK(r == TRUE, r, "free");
    r = CALL(SHFreeShared(hm, me));
    EXPECT_OK(r == TRUE, r, "free");
    r = CALL(SHFreeShared(hp, me));
    EXPECT_OK(r == TRUE, r, "free");
    send_u64(p2c[1], 1);
    EXPECT_CHILD_OK(pid, "the child exited 0");
}

static const struct test_case cases[] = {
    {"other_uid", other_uid},
    {"other_uid_child_table", other_uid_child_table},
    {"nondumpable", nondumpable},
};

int main(int argc, char **argv)
{
    return RUN_CASES(cases);
}
