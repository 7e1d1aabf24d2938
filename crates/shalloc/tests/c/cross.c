/*
 * Calls across processes: forked children and separately executed programs (this program run
 * again), both directions; handles outliving their allocator; tables of exited processes; zombies;
 * SHMapHandle between tables. Processes synchronise over pipes only.
 *
 * Usage: cross CASE
 *        cross exec-child-lock-write HANDLE PID    (locks HANDLE in PID's table, writes an answer)
 *        cross exec-child-free HANDLE PID          (frees HANDLE in PID's table)
 *        cross exec-child-receive                  (reads a handle of its own table from stdin)
 */

#include "check.h"

#include <spawn.h>

extern char **environ;

static const char question[] = "what is the answer?";
static const char answer[] = "forty-two, from the child";

/* Starts this program again with `args` (NULL-terminated, after the program name); its stdin is
 * `stdin_fd` when that is not -1. */
static pid_t spawn_self(char *const args[], int stdin_fd)
{
    char *argv[8];
    size_t n = 0;
    argv[n++] = "cross";
    for (; args[n - 1] != NULL && n < 7; n++) {
        argv[n] = args[n - 1];
    }
    argv[n] = NULL;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    if (stdin_fd >= 0) {
        posix_spawn_file_actions_adddup2(&actions, stdin_fd, 0);
    }
    pid_t pid;
    int rc = posix_spawn(&pid, "/proc/self/exe", &actions, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    CHECK(rc == 0, rc, "posix_spawn /proc/self/exe %s", args[0]);
    return pid;
}

static unsigned long parse_number(const char *s)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 0);
    if (errno != 0 || end == s || *end != '\0') {
        die("not a number: %s", s);
    }
    return v;
}

/* ---- hidden cases: the executed children ------------------------------------------------------ */

CASE(exec_child_lock_write)
{
    who = "exec child";
    CHECK(argc == 2, argc, "got HANDLE and PID on the command line");
    HANDLE h = AS_HANDLE(parse_number(argv[0]));
    DWORD owner = (DWORD)parse_number(argv[1]);
    CHECK(owner != self_pid(), owner, "the owner %u is another process", (unsigned)owner);
    char *p = CALL(SHLockShared(h, owner));
    EXPECT_OK(p != NULL, p, "lock handle %#lx of process %u", HVAL(h), (unsigned)owner);
    SIZE_T size = CALL(SHGetSizeShared(p));
    EXPECT_OK(size == 64, size, "the block's size is 64");
    CHECK(strcmp(p, question) == 0, p[0], "the block holds the question");
    memset(p, 0, 64);
    memcpy(p, answer, sizeof answer);
    BOOL r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock");
}

CASE(exec_child_free)
{
    who = "exec child";
    CHECK(argc == 2, argc, "got HANDLE and PID on the command line");
    HANDLE h = AS_HANDLE(parse_number(argv[0]));
    DWORD owner = (DWORD)parse_number(argv[1]);
    BOOL r = CALL(SHFreeShared(h, owner));
    EXPECT_OK(r == TRUE, r, "free handle %#lx in the table of process %u", HVAL(h), (unsigned)owner);
    r = CALL(SHFreeShared(h, owner));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_HANDLE, "a second free fails with ERROR_INVALID_HANDLE");
}

CASE(exec_child_receive)
{
    who = "exec child";
    char line[64] = "";
    size_t len = 0;
    while (len < sizeof line - 1) {
        ssize_t n = read(0, line + len, 1);
        if (n == 1 && line[len] == '\n') {
            break;
        }
        if (n != 1) {
            die("reading the handle from stdin");
        }
        len++;
    }
    line[len] = '\0';
    HANDLE h = AS_HANDLE(parse_number(line));
    DWORD me = self_pid();
    char *p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL, p, "lock handle %#lx of its own table", HVAL(h));
    CHECK(strcmp(p, question) == 0, p[0], "the block holds what the parent put there");
    BOOL r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "free it in its own table");
    r = CALL(SHFreeShared(h, me));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_HANDLE, "a second free fails with ERROR_INVALID_HANDLE");
}

/* ---- cases ----------------------------------------------------------------------------------- */

static HANDLE alloc_question(DWORD into)
{
    char block[64] = {0};
    memcpy(block, question, sizeof question);
    HANDLE h = CALL(SHAllocShared(block, sizeof block, into));
    EXPECT_OK(h != NULL, h, "alloc the question into the table of process %u", (unsigned)into);
    return h;
}

/* (a) The parent allocates into its own table; a forked child locks with the parent's id and
 * writes; the parent sees the write. */
CASE(fork_parent_table)
{
    DWORD me = self_pid();
    HANDLE h = alloc_question(me);
    int c2p[2];
    make_pipe(c2p);
    pid_t pid = fork_child("child");
    if (pid == 0) {
        char *p = CALL(SHLockShared(h, me));
        EXPECT_OK(p != NULL, p, "lock the parent's handle with the parent's pid");
        CHECK(strcmp(p, question) == 0, p[0], "the child reads the question");
        memcpy(p, answer, sizeof answer);
        BOOL r = CALL(SHUnlockShared(p));
        EXPECT_OK(r == TRUE, r, "unlock");
        send_u64(c2p[1], 1);
        child_done();
    }
    close(c2p[1]);
    char *view = CALL(SHLockShared(h, me));
    EXPECT_OK(view != NULL, view, "the parent locks its own handle");
    CHECK(recv_u64(c2p[0]) == 1, 0, "the child says it wrote");
    CHECK(strcmp(view, answer) == 0, view[0], "the parent's live view sees the child's write");
    EXPECT_CHILD_OK(pid, "the child exited 0");
    char *again = CALL(SHLockShared(h, me));
    EXPECT_OK(again != NULL && strcmp(again, answer) == 0, again, "a new lock sees it too");
    BOOL r = CALL(SHUnlockShared(again));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHUnlockShared(view));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "the parent frees its handle");
}

/* (b) The parent allocates into a running child's table and sends the value; the child locks and
 * frees with its own id. */
CASE(fork_child_table)
{
    DWORD me = self_pid();
    int p2c[2], c2p[2];
    make_pipe(p2c);
    make_pipe(c2p);
    pid_t pid = fork_child("child");
    if (pid == 0) {
        close(p2c[1]);
        close(c2p[0]);
        DWORD mine = self_pid();
        HANDLE h = AS_HANDLE(recv_u64(p2c[0]));
        char *p = CALL(SHLockShared(h, mine));
        EXPECT_OK(p != NULL, p, "lock handle %#lx with its own pid", HVAL(h));
        CHECK(strcmp(p, question) == 0, p[0], "the child reads the question");
        memcpy(p, answer, sizeof answer);
        BOOL r = CALL(SHUnlockShared(p));
        EXPECT_OK(r == TRUE, r, "unlock");
        void *wrong = CALL(SHLockShared(h, me));
        EXPECT_ERR(wrong == NULL, wrong, ERROR_INVALID_HANDLE, "the handle is not in the parent's table");
        r = CALL(SHFreeShared(h, mine));
        EXPECT_OK(r == TRUE, r, "free it with its own pid");
        r = CALL(SHFreeShared(h, mine));
        EXPECT_ERR(r == FALSE, r, ERROR_INVALID_HANDLE, "a second free fails with ERROR_INVALID_HANDLE");
        send_u64(c2p[1], 1);
        recv_u64(p2c[0]); /* stay alive until the parent has looked */
        child_done();
    }
    close(p2c[0]);
    close(c2p[1]);
    HANDLE h = alloc_question((DWORD)pid);
    char *view = CALL(SHLockShared(h, (DWORD)pid));
    EXPECT_OK(view != NULL, view, "the parent can lock the handle in the child's table");
    send_u64(p2c[1], HVAL(h));
    CHECK(recv_u64(c2p[0]) == 1, 0, "the child says it read, wrote and freed");
    CHECK(strcmp(view, answer) == 0, view[0], "the parent's view sees the child's write");
    void *gone = CALL(SHLockShared(h, (DWORD)pid));
    EXPECT_ERR(gone == NULL, gone, ERROR_INVALID_HANDLE, "after the child's free the handle is gone from its table");
    BOOL r = CALL(SHUnlockShared(view));
    EXPECT_OK(r == TRUE, r, "unlock");
    send_u64(p2c[1], 2);
    EXPECT_CHILD_OK(pid, "the child exited 0");
}

/* The parent allocates into its own table and runs this program again with HANDLE PID; the new
 * program locks and writes, another frees. */
CASE(exec_parent_table)
{
    DWORD me = self_pid();
    HANDLE h = alloc_question(me);
    char hs[32], ps[32];
    snprintf(hs, sizeof hs, "%#lx", HVAL(h));
    snprintf(ps, sizeof ps, "%u", (unsigned)me);
    char *lock_args[] = {"exec-child-lock-write", hs, ps, NULL};
    pid_t pid = spawn_self(lock_args, -1);
    EXPECT_CHILD_OK(pid, "the executed child locked, checked and wrote");
    char *p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL, p, "lock");
    CHECK(strcmp(p, answer) == 0, p[0], "the parent sees the executed child's write");
    BOOL r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock");

    char *free_args[] = {"exec-child-free", hs, ps, NULL};
    pid = spawn_self(free_args, -1);
    EXPECT_CHILD_OK(pid, "another executed child freed the handle in the parent's table");
    p = CALL(SHLockShared(h, me));
    EXPECT_ERR(p == NULL, p, ERROR_INVALID_HANDLE, "the handle is gone from the parent's table");
}

/* The parent runs this program again, allocates into the new process's table and sends the value
 * on its stdin; the new program locks and frees with its own id. */
CASE(exec_child_table)
{
    int fds[2];
    make_pipe(fds);
    char *args[] = {"exec-child-receive", NULL};
    pid_t pid = spawn_self(args, fds[0]);
    close(fds[0]);
    HANDLE h = alloc_question((DWORD)pid);
    char line[32];
    int len = snprintf(line, sizeof line, "%#lx\n", HVAL(h));
    write_all(fds[1], line, (size_t)len);
    close(fds[1]);
    EXPECT_CHILD_OK(pid, "the executed child locked and freed the handle in its own table");
    void *p = CALL(SHLockShared(h, (DWORD)pid));
    EXPECT_ERR(p == NULL, p, ERROR_INVALID_PARAMETER, "the reaped child's table can no longer be named");
}

/* A handle that a child put into its parent's table outlives the child. */
CASE(survives_child_exit)
{
    DWORD me = self_pid();
    int c2p[2];
    make_pipe(c2p);
    pid_t pid = fork_child("child");
    if (pid == 0) {
        HANDLE h = CALL(SHAllocShared(answer, sizeof answer, me));
        EXPECT_OK(h != NULL, h, "the child allocates into the parent's table");
        HANDLE own = CALL(SHAllocShared(answer, sizeof answer, self_pid()));
        EXPECT_OK(own != NULL, own, "and into its own table");
        send_u64(c2p[1], HVAL(h));
        child_done();
    }
    close(c2p[1]);
    HANDLE h = AS_HANDLE(recv_u64(c2p[0]));
    EXPECT_CHILD_OK(pid, "the child exited");
    char *p = CALL(SHLockShared(h, me));
    EXPECT_OK(p != NULL, p, "after the child was reaped, the parent locks the handle it left");
    CHECK(strcmp(p, answer) == 0, p[0], "the block holds the child's bytes");
    BOOL r = CALL(SHFreeShared(h, me));
    EXPECT_OK(r == TRUE, r, "the parent frees it");
    r = CALL(SHFreeShared(h, me));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_HANDLE, "a second free fails");
    CHECK(strcmp(p, answer) == 0, p[0], "the parent's view survives the free");
    r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock");
}

/* When a process exits, its table goes: a handle in it cannot be used again. */
CASE(exited_table_closed)
{
    int p2c[2], c2p[2];
    make_pipe(p2c);
    make_pipe(c2p);
    pid_t pid = fork_child("child");
    if (pid == 0) {
        close(p2c[1]);
        close(c2p[0]);
        HANDLE h = CALL(SHAllocShared(answer, sizeof answer, self_pid()));
        EXPECT_OK(h != NULL, h, "the child allocates into its own table");
        send_u64(c2p[1], HVAL(h));
        recv_u64(p2c[0]);
        child_done();
    }
    close(p2c[0]);
    close(c2p[1]);
    HANDLE h = AS_HANDLE(recv_u64(c2p[0]));
    char *p = CALL(SHLockShared(h, (DWORD)pid));
    EXPECT_OK(p != NULL && strcmp(p, answer) == 0, p, "while the child lives, the parent locks its handle");
    HANDLE dup = CALL(SHMapHandle(h, (DWORD)pid, self_pid(), 0, 0));
    EXPECT_OK(dup != NULL, dup, "and duplicates it into its own table");
    send_u64(p2c[1], 1);

    /* Exited, not yet reaped. */
    siginfo_t info;
    int rc = waitid(P_PID, (id_t)pid, &info, WEXITED | WNOWAIT);
    CHECK(rc == 0 && info.si_code == CLD_EXITED && info.si_status == 0, rc, "the child exited 0 (not reaped yet)");
    void *q = CALL(SHLockShared(h, (DWORD)pid));
    EXPECT_ERR(q == NULL, q, ERROR_ACCESS_DENIED, "lock from the exited (zombie) child's table fails with ERROR_ACCESS_DENIED");

    int status = wait_status(pid);
    CHECK(WIFEXITED(status), status, "reap the child");
    q = CALL(SHLockShared(h, (DWORD)pid));
    EXPECT_ERR(q == NULL, q, ERROR_INVALID_PARAMETER, "lock from the reaped child's table fails (no such process)");
    BOOL r = CALL(SHFreeShared(h, (DWORD)pid));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_PARAMETER, "free in the reaped child's table fails (no such process)");

    CHECK(strcmp(p, answer) == 0, p[0], "the parent's view outlives the child's table");
    char *d = CALL(SHLockShared(dup, self_pid()));
    EXPECT_OK(d != NULL && strcmp(d, answer) == 0, d, "the duplicate in the parent's table outlives it too");
    r = CALL(SHUnlockShared(d));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHUnlockShared(p));
    EXPECT_OK(r == TRUE, r, "unlock");
    r = CALL(SHFreeShared(dup, self_pid()));
    EXPECT_OK(r == TRUE, r, "free the duplicate");
}

/* Allocating into an exited process: a zombie is access denied, a reaped one no such process. */
CASE(zombie)
{
    int p2c[2], c2p[2];
    make_pipe(p2c);
    make_pipe(c2p);
    pid_t pid = fork_child("child");
    if (pid == 0) {
        close(p2c[1]);
        close(c2p[0]);
        HANDLE h = CALL(SHAllocShared(answer, sizeof answer, self_pid()));
        EXPECT_OK(h != NULL, h, "the child allocates into its own table");
        send_u64(c2p[1], HVAL(h));
        recv_u64(p2c[0]);
        child_done();
    }
    close(p2c[0]);
    close(c2p[1]);
    HANDLE h = AS_HANDLE(recv_u64(c2p[0]));
    HANDLE live = CALL(SHAllocShared("x", 2, (DWORD)pid));
    EXPECT_OK(live != NULL, live, "alloc into the live child works");
    send_u64(p2c[1], 1);

    siginfo_t info;
    int rc = waitid(P_PID, (id_t)pid, &info, WEXITED | WNOWAIT);
    CHECK(rc == 0 && info.si_code == CLD_EXITED, rc, "the child exited (a zombie now)");
    HANDLE z = CALL(SHAllocShared("x", 2, (DWORD)pid));
    EXPECT_ERR(z == NULL, z, ERROR_ACCESS_DENIED, "alloc into the zombie fails with ERROR_ACCESS_DENIED");
    z = CALL(SHAllocShared(NULL, 0, (DWORD)pid));
    EXPECT_ERR(z == NULL, z, ERROR_ACCESS_DENIED, "an empty alloc into the zombie fails with ERROR_ACCESS_DENIED");
    void *p = CALL(SHLockShared(h, (DWORD)pid));
    EXPECT_ERR(p == NULL, p, ERROR_ACCESS_DENIED, "lock from the zombie's table fails with ERROR_ACCESS_DENIED");
    BOOL r = CALL(SHFreeShared(live, (DWORD)pid));
    EXPECT_ERR(r == FALSE, r, ERROR_ACCESS_DENIED, "free in the zombie's table fails with ERROR_ACCESS_DENIED");
    HANDLE m = CALL(SHMapHandle(h, (DWORD)pid, self_pid(), 0, 0));
    EXPECT_ERR(m == NULL, m, ERROR_ACCESS_DENIED, "SHMapHandle from the zombie's table fails with ERROR_ACCESS_DENIED");

    int status = wait_status(pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, status, "reap the child");
    z = CALL(SHAllocShared("x", 2, (DWORD)pid));
    EXPECT_ERR(z == NULL, z, ERROR_INVALID_PARAMETER, "alloc into the reaped child fails with ERROR_INVALID_PARAMETER");
    p = CALL(SHLockShared(h, (DWORD)pid));
    EXPECT_ERR(p == NULL, p, ERROR_INVALID_PARAMETER, "lock from the reaped child's table fails with ERROR_INVALID_PARAMETER");
}

/* SHMapHandle between the tables of two live processes. */
CASE(map_across)
{
    DWORD me = self_pid();
    int p2c[2], c2p[2];
    make_pipe(p2c);
    make_pipe(c2p);
    pid_t pid = fork_child("child");
    if (pid == 0) {
        close(p2c[1]);
        close(c2p[0]);
        DWORD mine = self_pid();
        HANDLE hc = AS_HANDLE(recv_u64(p2c[0]));
        char *p = CALL(SHLockShared(hc, mine));
        EXPECT_OK(p != NULL && strcmp(p, question) == 0, p, "lock the handle the parent mapped into its table");
        memcpy(p, answer, sizeof answer);
        BOOL r = CALL(SHUnlockShared(p));
        EXPECT_OK(r == TRUE, r, "unlock");
        r = CALL(SHFreeShared(hc, mine));
        EXPECT_OK(r == TRUE, r, "free it");
        HANDLE own = CALL(SHAllocShared(answer, sizeof answer, mine));
        EXPECT_OK(own != NULL, own, "alloc into its own table");
        send_u64(c2p[1], HVAL(own));
        recv_u64(p2c[0]); /* the parent moved it */
        p = CALL(SHLockShared(own, mine));
        EXPECT_ERR(p == NULL, p, ERROR_INVALID_HANDLE, "the parent's DUPLICATE_CLOSE_SOURCE closed it here");
        send_u64(c2p[1], 2);
        recv_u64(p2c[0]);
        child_done();
    }
    close(p2c[0]);
    close(c2p[1]);
    DWORD child = (DWORD)pid;
    HANDLE hp = alloc_question(me);
    HANDLE hc = CALL(SHMapHandle(hp, me, child, 0, 0));
    EXPECT_OK(hc != NULL && hc != hp, hc, "SHMapHandle own -> child's table");
    void *p = CALL(SHLockShared(hc, me));
    EXPECT_ERR(p == NULL, p, ERROR_INVALID_HANDLE, "the new handle is not in the parent's table");
    p = CALL(SHLockShared(hp, child));
    EXPECT_ERR(p == NULL, p, ERROR_INVALID_HANDLE, "the original is not in the child's table");
    BOOL r = CALL(SHFreeShared(hp, child));
    EXPECT_ERR(r == FALSE, r, ERROR_INVALID_HANDLE, "nor can it be freed there");
    send_u64(p2c[1], HVAL(hc));
    HANDLE own = AS_HANDLE(recv_u64(c2p[0]));
    char *v = CALL(SHLockShared(hp, me));
    EXPECT_OK(v != NULL && strcmp(v, answer) == 0, v, "the child's write through its handle is in the parent's block");
    r = CALL(SHUnlockShared(v));
    EXPECT_OK(r == TRUE, r, "unlock");
    HANDLE moved = CALL(SHMapHandle(own, child, me, 0, DUPLICATE_CLOSE_SOURCE));
    EXPECT_OK(moved != NULL, moved, "SHMapHandle child's table -> own with DUPLICATE_CLOSE_SOURCE");
    v = CALL(SHLockShared(moved, me));
    EXPECT_OK(v != NULL && strcmp(v, answer) == 0, v, "the moved handle reaches the child's block");
    r = CALL(SHUnlockShared(v));
    EXPECT_OK(r == TRUE, r, "unlock");
    p = CALL(SHLockShared(own, child));
    EXPECT_ERR(p == NULL, p, ERROR_INVALID_HANDLE, "the source in the child's table is closed");
    send_u64(p2c[1], 1);
    CHECK(recv_u64(c2p[0]) == 2, 0, "the child confirmed");
    HANDLE third = CALL(SHMapHandle(moved, me, child, 0, 0));
    EXPECT_OK(third != NULL, third, "SHMapHandle own -> child again");
    HANDLE back = CALL(SHMapHandle(third, child, child, 0, 0));
    EXPECT_OK(back != NULL && back != third, back, "SHMapHandle child -> child, made by the parent");
    r = CALL(SHFreeShared(back, child));
    EXPECT_OK(r == TRUE, r, "the parent frees a handle in the child's table");
    r = CALL(SHFreeShared(third, child));
    EXPECT_OK(r == TRUE, r, "and the other");
    r = CALL(SHFreeShared(moved, me));
    EXPECT_OK(r == TRUE, r, "free");
    r = CALL(SHFreeShared(hp, me));
    EXPECT_OK(r == TRUE, r, "free");
    send_u64(p2c[1], 3);
    EXPECT_CHILD_OK(pid, "the child exited 0");
}

static const struct test_case cases[] = {
    {"fork_parent_table", fork_parent_table},
    {"fork_child_table", fork_child_table},
    {"exec_parent_table", exec_parent_table},
    {"exec_child_table", exec_child_table},
    {"survives_child_exit", survives_child_exit},
    {"exited_table_closed", exited_table_closed},
    {"zombie", zombie},
    {"map_across", map_across},
    {"exec-child-lock-write", exec_child_lock_write},
    {"exec-child-free", exec_child_free},
    {"exec-child-receive", exec_child_receive},
};

int main(int argc, char **argv)
{
    return RUN_CASES(cases);
}
