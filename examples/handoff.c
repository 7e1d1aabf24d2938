/* A two-process hand-off in C: the parent allocates a block into its own table, a child locks it
 * with the parent's pid and writes an answer, the parent reads it and frees the handle.
 *
 *   cc handoff.c $(pkg-config --cflags --libs shalloc) -o handoff && ./handoff
 */
#include <shalloc.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    DWORD me = (DWORD)getpid();
    char question[32] = "what is six times seven?";
    HANDLE h = SHAllocShared(question, sizeof question, me);
    if (!h) {
        fprintf(stderr, "SHAllocShared: %u %s\n", shalloc_last_error(), shalloc_last_error_message());
        return 1;
    }
    fflush(stdout); /* don't let the child inherit unflushed output */
    pid_t child = fork();
    if (child == 0) {
        /* The child knows (h, parent pid): that is all it needs. */
        char *p = SHLockShared(h, me);
        if (!p) _exit(2);
        printf("child read: %s\n", p);
        strcpy(p, "42");
        SHUnlockShared(p);
        fflush(stdout); /* _exit skips stdio's flush */
        _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    char *p = SHLockShared(h, me);
    if (!p || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
    printf("parent read the answer: %s\n", p);
    int ok = strcmp(p, "42") == 0;
    SHUnlockShared(p);
    SHFreeShared(h, me);
    return ok ? 0 : 1;
}
