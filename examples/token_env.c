/* A token passed through an environment variable: the child finds the block with nothing but
 * SHALLOC_TOKEN=HANDLE@PID (the same text form the Rust API and the CLI use).
 *
 *   cc token_env.c $(pkg-config --cflags --libs shalloc) -o token_env && ./token_env
 */
#define _GNU_SOURCE
#include <shalloc.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    (void)argc;
    const char *token = getenv("SHALLOC_TOKEN");
    if (token) {
        unsigned long h, owner;
        if (sscanf(token, "%lx@%lu", &h, &owner) != 2) return 1;
        char *p = SHLockSharedEx((HANDLE)(uintptr_t)h, (DWORD)owner, FALSE);
        if (!p) return 1;
        printf("child: %s holds \"%s\"\n", token, p);
        SHUnlockShared(p);
        return 0;
    }
    DWORD me = (DWORD)getpid();
    static const char text[] = "configuration, handed down";
    HANDLE h = SHAllocShared(text, sizeof text, me);
    if (!h) return 1;
    char value[64];
    snprintf(value, sizeof value, "%#lx@%lu", (unsigned long)(uintptr_t)h, (unsigned long)me);
    setenv("SHALLOC_TOKEN", value, 1);
    printf("parent: starting a child with SHALLOC_TOKEN=%s\n", value);
    fflush(stdout);
    pid_t child;
    char *child_argv[] = {argv[0], NULL};
    if (posix_spawn(&child, "/proc/self/exe", NULL, NULL, child_argv, environ) != 0) return 1;
    int status;
    waitpid(child, &status, 0);
    SHFreeShared(h, me);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
