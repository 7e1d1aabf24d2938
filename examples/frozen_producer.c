/* A producer that hands frozen blocks to a consumer it spawned: frozen blocks can never change, so
 * the consumer may read them in place without fear. Each block goes into the consumer's table and
 * its handle down a pipe.
 *
 *   cc frozen_producer.c $(pkg-config --cflags --libs shalloc) -o frozen_producer && ./frozen_producer
 */
#define _GNU_SOURCE
#include <shalloc.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int consumer(void) {
    unsigned long h;
    while (scanf("%lx", &h) == 1) {
        DWORD me = (DWORD)getpid();
        const unsigned char *p = SHLockSharedEx((HANDLE)(uintptr_t)h, me, FALSE);
        if (!p || !shalloc_is_frozen(p)) return 1;
        unsigned long sum = 0;
        SIZE_T n = SHGetSizeShared(p);
        for (SIZE_T i = 0; i < n; i++) sum += p[i];
        printf("consumer: %zu frozen bytes, sum %lu\n", (size_t)n, sum);
        SHUnlockShared((LPVOID)p);
        SHFreeShared((HANDLE)(uintptr_t)h, me);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "consumer") == 0) return consumer();
    int fds[2];
    if (pipe(fds) != 0) return 1;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[0], 0);
    posix_spawn_file_actions_addclose(&actions, fds[1]);
    char *child_argv[] = {argv[0], "consumer", NULL};
    pid_t child;
    if (posix_spawn(&child, "/proc/self/exe", &actions, NULL, child_argv, environ) != 0) return 1;
    close(fds[0]);
    for (int i = 1; i <= 3; i++) {
        unsigned char block[1024];
        memset(block, i, sizeof block);
        HANDLE h = shalloc_alloc_frozen(block, sizeof block, (DWORD)child);
        if (!h) {
            fprintf(stderr, "shalloc_alloc_frozen: %s\n", shalloc_last_error_message());
            return 1;
        }
        dprintf(fds[1], "%lx\n", (unsigned long)(uintptr_t)h);
        printf("producer: sent frozen block %d as %#lx\n", i, (unsigned long)(uintptr_t)h);
    }
    close(fds[1]);
    int status;
    waitpid(child, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
