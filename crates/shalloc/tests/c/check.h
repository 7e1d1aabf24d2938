/*
 * What every C test program of shalloc's C ABI shares: checks that print one line each and end the
 * process on the first failure, the last-error sentinel, pipe and child helpers, and a dispatcher
 * that runs the test case named on the command line.
 *
 * Conventions:
 * - `CALL(expr)` sets the last error to SENTINEL and then evaluates `expr`, so the check after it
 *   can tell whether the call touched the last error.
 * - `EXPECT_OK(cond, ret, ...)`: `cond` holds and the call left the last error (and its message)
 *   untouched.
 * - `EXPECT_ERR(cond, ret, code, ...)`: `cond` holds, the last error is `code` and a message says
 *   why.
 * - `CHECK(cond, ret, ...)`: `cond` holds.
 * Every check prints "ok <who>: <name>"; a failed one prints "FAIL <who>: <name> ..." with the
 * value, shalloc_last_error() and shalloc_last_error_message(), and exits with status 1.
 * A case ends with "PASS <case> (<n> checks)".
 */

#ifndef SHALLOC_TEST_CHECK_H
#define SHALLOC_TEST_CHECK_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shalloc.h"

/* The value the last error is set to before each call under test. */
#define SENTINEL 0xdeadbeefu

/* Who is printing: "main", "child", "exec child", "thread 2", ... */
static _Thread_local const char *who = "main";
/* When set, passing checks of this thread print nothing (loops with thousands of checks). */
static _Thread_local int quiet;
/* Checks passed by this process (all threads). */
static unsigned long checks_passed;

enum expect_kind { EXPECT_ANY, EXPECT_UNTOUCHED, EXPECT_CODE };

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...)
{
    int saved = errno;
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    printf("FAIL %s: %s (errno %d: %s)\n", who, text, saved, strerror(saved));
    fflush(stdout);
    _exit(1);
}

__attribute__((format(printf, 7, 8))) static void check_at(const char *file, int line, int cond,
                                                            unsigned long long ret,
                                                            enum expect_kind kind, DWORD code,
                                                            const char *fmt, ...)
{
    /* Read these first: printing must not run before them. */
    DWORD err = shalloc_last_error();
    const char *msg = shalloc_last_error_message();
    char name[512];
    char why[256] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (!cond) {
        snprintf(why, sizeof why, "the condition is false");
    } else if (kind == EXPECT_UNTOUCHED && err != SENTINEL) {
        snprintf(why, sizeof why, "the call changed the last error (expected it left at %#x)",
                 SENTINEL);
    } else if (kind == EXPECT_UNTOUCHED && msg != NULL && msg[0] != '\0') {
        snprintf(why, sizeof why, "the call set a last error message");
    } else if (kind == EXPECT_CODE && err != code) {
        snprintf(why, sizeof why, "expected last error %u", (unsigned)code);
    } else if (kind == EXPECT_CODE && (msg == NULL || msg[0] == '\0')) {
        snprintf(why, sizeof why, "the failure left no last error message");
    } else {
        __atomic_add_fetch(&checks_passed, 1, __ATOMIC_RELAXED);
        if (!quiet) {
            printf("ok %s: %s\n", who, name);
        }
        return;
    }
    printf("FAIL %s: %s [%s:%d]: %s; returned %#llx (%lld), shalloc_last_error() = %u (%#x), "
           "shalloc_last_error_message() = \"%s\"\n",
           who, name, file, line, why, ret, (long long)ret, (unsigned)err, (unsigned)err,
           msg ? msg : "(null)");
    fflush(stdout);
    _exit(1);
}

#define AS_VALUE(ret) ((unsigned long long)(uintptr_t)(ret))
#define CALL(expr) (shalloc_set_last_error(SENTINEL), (expr))
#define CHECK(cond, ret, ...)                                                                      \
    check_at(__FILE__, __LINE__, !!(cond), AS_VALUE(ret), EXPECT_ANY, 0, __VA_ARGS__)
#define EXPECT_OK(cond, ret, ...)                                                                  \
    check_at(__FILE__, __LINE__, !!(cond), AS_VALUE(ret), EXPECT_UNTOUCHED, 0, __VA_ARGS__)
#define EXPECT_ERR(cond, ret, code, ...)                                                           \
    check_at(__FILE__, __LINE__, !!(cond), AS_VALUE(ret), EXPECT_CODE, (code), __VA_ARGS__)

/* A handle as a number, for printing and sending. */
#define HVAL(h) ((unsigned long)(uintptr_t)(h))
#define AS_HANDLE(v) ((HANDLE)(uintptr_t)(v))

static inline DWORD self_pid(void)
{
    return (DWORD)getpid();
}

/* ---- pipes ---------------------------------------------------------------------------------- */

static inline void make_pipe(int fds[2])
{
    if (pipe2(fds, O_CLOEXEC) != 0) {
        die("pipe2");
    }
}

static inline void write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            die("write to fd %d", fd);
        }
        p += n;
        len -= (size_t)n;
    }
}

/* Reads exactly `len` bytes; dies on end of file (the other side is gone). */
static inline void read_exact(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n == 0) {
            errno = 0;
            die("fd %d closed by the other side before the expected message", fd);
        }
        if (n < 0) {
            die("read from fd %d", fd);
        }
        p += n;
        len -= (size_t)n;
    }
}

static inline void send_u64(int fd, uint64_t v)
{
    write_all(fd, &v, sizeof v);
}

static inline uint64_t recv_u64(int fd)
{
    uint64_t v;
    read_exact(fd, &v, sizeof v);
    return v;
}

/* ---- children ------------------------------------------------------------------------------- */

/* Forks; in the child, `who` becomes `name`. stdout is unbuffered, so nothing is printed twice. */
static inline pid_t fork_child(const char *name)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        die("fork");
    }
    if (pid == 0) {
        who = name;
    }
    return pid;
}

/* Ends a forked child that passed all its checks. */
__attribute__((noreturn)) static inline void child_done(void)
{
    printf("ok %s: the child passed all its checks\n", who);
    fflush(stdout);
    _exit(0);
}

/* Waits for child `pid` and returns its wait status (the harness's deadline covers hangs). */
static inline int wait_status(pid_t pid)
{
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            die("waitpid(%d)", (int)pid);
        }
    }
    return status;
}

#define EXPECT_CHILD_OK(pid, ...)                                                                  \
    do {                                                                                           \
        int status_ = wait_status(pid);                                                            \
        CHECK(WIFEXITED(status_) && WEXITSTATUS(status_) == 0, status_, __VA_ARGS__);              \
    } while (0)

/* No core files from children that are meant to crash. */
static inline void no_core_dumps(void)
{
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none);
}

/* ---- test cases ----------------------------------------------------------------------------- */

#define CASE(fn)                                                                                   \
    static void fn(int argc __attribute__((unused)), char **argv __attribute__((unused)))

struct test_case {
    const char *name;
    void (*run)(int argc, char **argv);
};

/* Runs the case named by argv[1] with the remaining arguments. */
static inline int run_case(int argc, char **argv, const struct test_case *cases, size_t count)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    setvbuf(stderr, NULL, _IONBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: %s CASE [ARGS...]\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < count; i++) {
        if (strcmp(cases[i].name, argv[1]) == 0) {
            cases[i].run(argc - 2, argv + 2);
            printf("PASS %s (%lu checks)\n", argv[1], checks_passed);
            return 0;
        }
    }
    fprintf(stderr, "%s: no case named %s\n", argv[0], argv[1]);
    return 2;
}

#define RUN_CASES(cases) run_case(argc, argv, cases, sizeof(cases) / sizeof((cases)[0]))

#endif /* SHALLOC_TEST_CHECK_H */
