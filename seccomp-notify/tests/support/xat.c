/* Test helper run inside the test containers: exec variants the shell cannot express. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static int report(const char *what) {
    printf("%s errno=%d (%s)\n", what, errno, strerror(errno));
    fflush(stdout);
    return 126;
}

static int xexecveat(int dirfd, const char *path, char **argv, int flags) {
    return syscall(SYS_execveat, dirfd, path, argv, environ, flags);
}

/* swap mode: one thread flips what an exec will find while the main thread executes it. */
struct swap {
    const char *mode, *image, *drift, *link;
    char path[256];
    int fd, image_fd, drift_fd, leader_exits;
    volatile int started;
};

static void *flipper(void *arg) {
    struct swap *s = arg;
    char tmp_a[300], tmp_b[300];
    snprintf(tmp_a, sizeof tmp_a, "%s.a", s->link);
    snprintf(tmp_b, sizeof tmp_b, "%s.b", s->link);
    s->started = 1;
    for (;;) {
        if (!strcmp(s->mode, "path")) {
            strcpy(s->path, s->drift);
            strcpy(s->path, s->image);
        } else if (!strcmp(s->mode, "link")) {
            unlink(tmp_b);
            symlink(s->drift, tmp_b);
            rename(tmp_b, s->link);
            unlink(tmp_a);
            symlink(s->image, tmp_a);
            rename(tmp_a, s->link);
        } else {
            dup2(s->drift_fd, s->fd);
            dup2(s->image_fd, s->fd);
        }
    }
    return NULL;
}

static int memfd_of(const char *path) {
    int src = open(path, O_RDONLY), mfd = memfd_create("payload", MFD_CLOEXEC);
    char buf[65536]; ssize_t n;
    while ((n = read(src, buf, sizeof buf)) > 0) write(mfd, buf, n);
    close(src);
    return mfd;
}

static void *swap_exec(void *arg) {
    struct swap *s = arg;
    char *args[] = {"x", "ran", NULL};
    if (s->fd >= 0) xexecveat(s->fd, "", args, AT_EMPTY_PATH);
    else if (!strcmp(s->mode, "link")) execve(s->link, args, environ);
    else execve(s->path, args, environ);
    _exit(errno == EPERM ? 126 : 125);
}

/* One try in a child: 0 = the image ran, 42 = the drift ran, 126 = EPERM, 125 = other errno. */
static void swap_child(struct swap *s) {
    if (!strcmp(s->mode, "fd") || !strcmp(s->mode, "memfd")) {
        s->image_fd = open(s->image, O_PATH | O_CLOEXEC);
        s->drift_fd = !strcmp(s->mode, "memfd") ? memfd_of(s->drift) : open(s->drift, O_PATH | O_CLOEXEC);
        s->fd = dup(s->image_fd);
    }
    strcpy(s->path, s->image);
    pthread_t thread;
    pthread_create(&thread, NULL, flipper, s);
    while (!s->started) {}
    if (s->leader_exits) {
        /* The exec runs in another thread once the group leader has exited (a zombie). */
        pthread_t execer;
        pthread_create(&execer, NULL, swap_exec, s);
        pthread_exit(NULL);
    }
    swap_exec(s);
}

/* Runs COUNT tries, each `try(arg)` in a forked child, and prints what their exit codes say:
   0 = the image ran, 42 = the drift ran, 126 = EPERM, anything else = other (of which 127, a
   program that could not load its own program, is also counted as rc127). */
static void tries(const char *label, int count, void (*try)(void *), void *arg) {
    int image = 0, drift = 0, denied = 0, other = 0, rc127 = 0;
    for (int i = 0; i < count; i++) {
        pid_t child = fork();
        if (child == 0) { try(arg); _exit(125); }
        int status;
        waitpid(child, &status, 0);
        int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        if (code == 0) image++;
        else if (code == 42) drift++;
        else if (code == 126) denied++;
        else other++;
        if (code == 127) rc127++;
    }
    printf("swap %s image=%d drift=%d denied=%d other=%d rc127=%d\n", label, image, drift, denied,
           other, rc127);
}

static void swap_try(void *arg) { swap_child(arg); }

/* One try of swap-memfd-path (arg: xat's argv): the drift is /proc/self/fd/N of a memfd. */
static void memfd_path_try(void *arg) {
    char **argv = arg;
    static char fd_path[64];
    snprintf(fd_path, sizeof fd_path, "/proc/self/fd/%d", memfd_of(argv[3]));
    struct swap s = {.mode = "path", .image = argv[2], .drift = fd_path, .fd = -1};
    swap_child(&s);
}

/* xat swap MODE[-lx] IMAGE DRIFT COUNT [LINK]: MODE path|link|fd|memfd; counts what ran.
   With "-lx" the exec comes from a second thread after the main thread exited. */
static int swap_race(int argc, char **argv) {
    struct swap s = {.mode = argv[2], .image = argv[3], .drift = argv[4],
                     .link = argc >= 7 ? argv[6] : "/tmp/xat-swap-link", .fd = -1};
    char *suffix = strstr(argv[2], "-lx");
    if (suffix && suffix[3] == 0) { *suffix = 0; s.leader_exits = 1; }
    if (!strcmp(s.mode, "link")) { unlink(s.link); symlink(s.image, s.link); }
    char label[64];
    snprintf(label, sizeof label, "%s%s", s.mode, s.leader_exits ? "-lx" : "");
    tries(label, atoi(argv[5]), swap_try, &s);
    return 0;
}

/* A string the patch modes rewrite in a copy of this program ("good" becomes "EVIL"). */
static const char marker[] = "driftguard-xat-marker:good";

/* Rewrites the marker of FILE through a shared writable mapping (no write(2): on tmpfs the
   file keeps its timestamps). With prefault, the mapping is written once (same byte) and an exec
   of FILE is tried while it is live (it fails with ETXTBSY, after the supervisor has looked at
   the still unchanged file); only then is the marker rewritten. */
static int patch_marker(const char *file, int prefault) {
    int fd = open(file, O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) return report("patch-open");
    char *map = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) return report("patch-mmap");
    if (prefault) {
        map[0] = map[0];
        pid_t child = fork();
        if (child == 0) {
            char *args[] = {(char *)file, "ran", NULL};
            execve(file, args, environ);
            _exit(errno == ETXTBSY ? 26 : errno == EPERM ? 126 : 125);
        }
        int status;
        waitpid(child, &status, 0);
        printf("prefault-exec-rc=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    char *at = memmem(map, st.st_size, marker, sizeof marker - 1);
    if (!at) { printf("patch no-marker\n"); return 1; }
    memcpy(at + sizeof marker - 5, "EVIL", 4);
    munmap(map, st.st_size);
    close(fd);
    printf("patched\n");
    return 0;
}

/* xat hold-dirty FILE (hold-clean FILE: without dirtying): maps FILE shared and writable,
   dirties every page, closes the fd (the
   mapping stays) and creates FILE.ready; once FILE.go exists it rewrites the marker through the
   mapping (no new fault, no new timestamp), creates FILE.patched and keeps the mapping until
   FILE.done exists. */
static int hold_dirty(const char *file, int dirty) {
    char ready[300], go[300], patched[300], done[300];
    snprintf(ready, sizeof ready, "%s.ready", file);
    snprintf(go, sizeof go, "%s.go", file);
    snprintf(patched, sizeof patched, "%s.patched", file);
    snprintf(done, sizeof done, "%s.done", file);
    int fd = open(file, O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) return report("dirty-open");
    char *map = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) return report("dirty-mmap");
    close(fd);
    for (off_t at = 0; dirty && at < st.st_size; at += 4096) map[at] = map[at];
    close(open(ready, O_CREAT | O_WRONLY, 0644));
    while (access(go, F_OK) != 0) usleep(1000);
    char *at = memmem(map, st.st_size, marker, sizeof marker - 1);
    if (at) memcpy(at + sizeof marker - 5, "EVIL", 4);
    close(open(patched, O_CREAT | O_WRONLY, 0644));
    while (access(done, F_OK) != 0) usleep(1000);
    munmap(map, st.st_size);
    return 0;
}

/* xat uffd-exec PATH COUNT: COUNT children each exec PATH with argv[1] in a page behind a
 * userfaultfd that nobody serves, so any read of it by another process blocks until the child
 * dies. Prints "uffd-started N" once the children are forked, then waits for them. */
static int uffd_exec(const char *path, int count) {
    long page = sysconf(_SC_PAGESIZE);
    for (int i = 0; i < count; i++) {
        if (fork() != 0) continue;
        int uffd = syscall(SYS_userfaultfd, O_CLOEXEC);
        if (uffd < 0) { perror("userfaultfd"); _exit(2); }
        struct uffdio_api api = { .api = UFFD_API };
        if (ioctl(uffd, UFFDIO_API, &api)) { perror("UFFDIO_API"); _exit(2); }
        char *mem = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        struct uffdio_register reg = {
            .range = { .start = (unsigned long)mem, .len = page },
            .mode = UFFDIO_REGISTER_MODE_MISSING,
        };
        if (mem == MAP_FAILED || ioctl(uffd, UFFDIO_REGISTER, &reg)) { perror("register"); _exit(2); }
        char *args[] = { (char *)path, mem, NULL };
        execve(path, args, environ);
        _exit(3);
    }
    printf("uffd-started %d\n", count);
    fflush(stdout);
    while (wait(NULL) > 0) {}
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *mode = argv[1];
    if (!strcmp(mode, "ran")) return 42; /* the marker a swapped-in copy of xat answers with */
    if (!strcmp(mode, "marker")) { puts(marker); return 0; }
    if (!strcmp(mode, "hold-dirty") && argc >= 3) return hold_dirty(argv[2], 1);
    /* hold-clean: the same, without dirtying the pages first (no timestamp changes at all) */
    if (!strcmp(mode, "hold-clean") && argc >= 3) return hold_dirty(argv[2], 0);
    if (!strcmp(mode, "x32") && argc >= 3) { /* xat x32 PATH: execve through the x32 ABI */
        char *args[] = {argv[2], NULL};
        syscall(0x40000000 | 520, argv[2], args, environ);
        return report("execve-x32");
    }
    if (!strcmp(mode, "unshare-swap") && argc >= 6) { /* swap, from a mount namespace of its own */
        if (unshare(CLONE_NEWNS) != 0) return report("unshare");
        return swap_race(argc, argv);
    }
    if (!strcmp(mode, "mmpatch") && argc >= 3) return patch_marker(argv[2], 0);
    if (!strcmp(mode, "prefault-patch") && argc >= 3) return patch_marker(argv[2], 1);
    if (!strcmp(mode, "swap") && argc >= 6) return swap_race(argc, argv);
    if (!strcmp(mode, "dirfd") && argc >= 4) { /* xat dirfd DIR NAME [ARGS] */
        int dir = open(argv[2], O_PATH | O_DIRECTORY);
        xexecveat(dir, argv[3], argv + 3, 0);
        return report("execveat-dirfd");
    }
    if (!strcmp(mode, "fd") && argc >= 3) { /* xat fd PATH [ARGS]: fexecve */
        int fd = open(argv[2], O_PATH);
        xexecveat(fd, "", argv + 2, AT_EMPTY_PATH);
        return report("execveat-empty-path");
    }
    if (!strcmp(mode, "memfd") && argc >= 3) { /* xat memfd SRC [ARGS] */
        int src = open(argv[2], O_RDONLY), mfd = memfd_create("payload", 0);
        char buf[65536]; ssize_t n;
        while ((n = read(src, buf, sizeof buf)) > 0) write(mfd, buf, n);
        xexecveat(mfd, "", argv + 2, AT_EMPTY_PATH);
        return report("execveat-memfd");
    }
    if (!strcmp(mode, "nonul")) { /* a path filling a page, no NUL, next page unmapped */
        char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        mprotect(p + 4096, 4096, PROT_NONE);
        memset(p, 'a', 4096);
        char *args[] = {"x", NULL};
        execve(p + 4096 - 100, args, environ);
        return report("execve-nonul");
    }
    if (!strcmp(mode, "long")) { /* a 64 KiB path */
        size_t len = 64 * 1024;
        char *p = malloc(len + 1);
        for (size_t i = 0; i < len; i++) p[i] = (i % 2) ? '/' : 'a';
        p[len] = 0;
        char *args[] = {"x", NULL};
        execve(p, args, environ);
        return report("execve-long");
    }
    if (!strcmp(mode, "race") && argc >= 4) { /* xat race PATH COUNT: killed mid-decision */
        int count = atoi(argv[3]);
        for (int i = 0; i < count; i++) {
            pid_t child = fork();
            if (child == 0) {
                char *args[] = {argv[2], NULL};
                execve(argv[2], args, environ);
                _exit(126);
            }
            usleep(i % 7 * 50);
            kill(child, SIGKILL);
            waitpid(child, NULL, 0);
        }
        printf("race done\n");
        return 0;
    }
    if (!strcmp(mode, "time") && argc >= 4) { /* xat time PATH COUNT: ns per fork+exec+wait */
        int count = atoi(argv[3]);
        for (int i = 0; i < count; i++) {
            struct timespec a, b;
            clock_gettime(CLOCK_MONOTONIC, &a);
            pid_t child = fork();
            if (child == 0) {
                char *args[] = {argv[2], NULL};
                execve(argv[2], args, environ);
                _exit(127);
            }
            int status;
            waitpid(child, &status, 0);
            clock_gettime(CLOCK_MONOTONIC, &b);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
            printf("%ld\n", (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec));
        }
        return 0;
    }
    if (!strcmp(mode, "loop") && argc >= 4) { /* xat loop PATH COUNT: fork+exec+wait */
        int count = atoi(argv[3]), failed = 0;
        for (int i = 0; i < count; i++) {
            pid_t child = fork();
            if (child == 0) {
                char *args[] = {argv[2], NULL};
                execve(argv[2], args, environ);
                _exit(100 + errno);
            }
            int status;
            waitpid(child, &status, 0);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                failed++;
                printf("exec %d failed status=%d\n", i, WEXITSTATUS(status));
                fflush(stdout);
            }
        }
        printf("loop done failed=%d\n", failed);
        return failed ? 1 : 0;
    }
    if (!strcmp(mode, "mfd-flags")) { /* xat mfd-flags: what memfd_create gives in this pid ns */
#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif
        int exec_fd = memfd_create("exec", MFD_CLOEXEC | MFD_EXEC);
        if (exec_fd < 0) printf("mfd-exec errno=%d\n", errno);
        else printf("mfd-exec ok\n");
        int plain = memfd_create("plain", MFD_CLOEXEC);
        if (plain < 0) { printf("mfd-plain errno=%d\n", errno); return 0; }
        int seals = fcntl(plain, F_GET_SEALS);
        printf("mfd-plain exec-sealed=%d\n", seals >= 0 && (seals & F_SEAL_EXEC) ? 1 : 0);
        return 0;
    }
    if (!strcmp(mode, "uffd-exec") && argc >= 4) return uffd_exec(argv[2], atoi(argv[3]));
    if (!strcmp(mode, "swap-memfd-path") && argc >= 5) {
        /* xat swap-memfd-path IMAGE DRIFT COUNT: a thread flips the exec path between IMAGE and
         * /proc/self/fd/N of a memfd copy of DRIFT; counts what ran, as swap does. */
        tries("memfd-path", atoi(argv[4]), memfd_path_try, argv);
        return 0;
    }
    return 2;
}
