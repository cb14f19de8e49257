/* memfd-exec FILE [ARG...]: copies FILE into an anonymous memfd and executes it with
 * execveat(fd, "", argv, envp, AT_EMPTY_PATH), the way fileless malware runs a payload.
 * Prints the error and exits 126 when the exec is refused. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: memfd-exec FILE [ARG...]\n");
        return 2;
    }
    int src = open(argv[1], O_RDONLY);
    int mem = memfd_create("payload", MFD_CLOEXEC);
    if (src < 0 || mem < 0) {
        perror("open/memfd_create");
        return 2;
    }
    char buf[65536];
    ssize_t n;
    while ((n = read(src, buf, sizeof buf)) > 0) {
        if (write(mem, buf, (size_t)n) != n) {
            perror("write");
            return 2;
        }
    }
    syscall(SYS_execveat, mem, "", &argv[1], environ, AT_EMPTY_PATH);
    fprintf(stderr, "memfd-exec: execveat: %s\n", strerror(errno));
    return 126;
}
