/*
 * vfsk-hold: guest-side checks of state that must outlive a backend worker crash. Each
 * subcommand takes some state (a lock, a half-read directory), prints "HOLDING <what>", waits
 * until the host creates GOFILE (the host kills the worker in between), then checks the state
 * survived. Exit 0 on success; prints "FAIL: ..." and exits 1 otherwise.
 *
 *   vfsk-hold ofd PATH GOFILE          OFD write lock held; a second open is refused after
 *   vfsk-hold flock PATH GOFILE        flock(LOCK_EX) held; a second open is refused after
 *   vfsk-hold readdir DIR N GOFILE     reads DIR in small getdents64 batches, pausing after the
 *                                      first; every one of N names f<i> seen exactly once
 *   vfsk-hold owner PATH GOFILE        POSIX write lock of this process through two fds; after:
 *                                      still held (another process is refused and F_GETLK names
 *                                      us), and closing one fd drops it at once
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void fail(const char *what)
{
    printf("FAIL: %s: %s\n", what, strerror(errno));
    fflush(stdout);
    exit(1);
}

static void wait_for(const char *gofile)
{
    fflush(stdout);
    /* The guest polls through the mount: each check is a LOOKUP the backend must answer. */
    while (access(gofile, F_OK) != 0) usleep(50 * 1000);
}

static int ofd(const char *path, const char *gofile)
{
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0) fail("open");
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    if (fcntl(fd, F_OFD_SETLK, &fl) < 0) fail("F_OFD_SETLK");
    printf("HOLDING ofd %s\n", path);
    wait_for(gofile);
    int other = open(path, O_RDWR);
    if (other < 0) fail("second open");
    struct flock f2 = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    if (fcntl(other, F_OFD_SETLK, &f2) == 0) {
        printf("FAIL: a second open description got the OFD lock after the crash\n");
        return 1;
    }
    if (errno != EAGAIN && errno != EACCES) fail("second F_OFD_SETLK");
    struct flock g = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    if (fcntl(other, F_OFD_GETLK, &g) < 0) fail("F_OFD_GETLK");
    if (g.l_type != F_WRLCK) {
        printf("FAIL: F_OFD_GETLK does not see the held lock\n");
        return 1;
    }
    printf("ok ofd lock held across the crash\n");
    return 0;
}

static int flk(const char *path, const char *gofile)
{
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0) fail("open");
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) fail("flock");
    printf("HOLDING flock %s\n", path);
    wait_for(gofile);
    int other = open(path, O_RDWR);
    if (other < 0) fail("second open");
    if (flock(other, LOCK_EX | LOCK_NB) == 0) {
        printf("FAIL: a second open got the flock after the crash\n");
        return 1;
    }
    if (errno != EWOULDBLOCK) fail("second flock");
    if (flock(fd, LOCK_UN) < 0) fail("unlock");
    if (flock(other, LOCK_EX | LOCK_NB) < 0) fail("flock after unlock");
    printf("ok flock held across the crash\n");
    return 0;
}

/* A child process tries F_SETLK(WRLCK 0..100): 0 = must be refused with F_GETLK naming
 * `holder`; 1 = must be granted. Returns 0 when it behaved so. */
static int child_try(const char *path, int granted, pid_t holder)
{
    pid_t pid = fork();
    if (pid < 0) fail("fork");
    if (pid == 0) {
        int c = open(path, O_RDWR);
        if (c < 0) _exit(10);
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100};
        int ok = fcntl(c, F_SETLK, &fl) == 0;
        if (granted) _exit(ok ? 0 : 20);
        if (ok || (errno != EAGAIN && errno != EACCES)) _exit(21);
        fl = (struct flock){.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
        if (fcntl(c, F_GETLK, &fl) < 0) _exit(22);
        _exit(fl.l_type == F_WRLCK && fl.l_pid == holder ? 0 : 23);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0) fail("waitpid");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 99;
}

static int owner(const char *path, const char *gofile)
{
    int x = open(path, O_RDWR | O_CREAT, 0644), y = open(path, O_RDWR), probe = open(path, O_RDWR);
    if (x < 0 || y < 0 || probe < 0) fail("open");
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100};
    if (fcntl(x, F_SETLK, &fl) < 0) fail("F_SETLK(x)");
    if (fcntl(y, F_SETLK, &fl) < 0) fail("F_SETLK(y): the same process through a second fd");
    printf("HOLDING owner %s\n", path);
    wait_for(gofile);
    int r = child_try(path, 0, getpid());
    if (r != 0) {
        printf("FAIL: after the crash another process was not refused, or F_GETLK did not name us (%d)\n", r);
        return 1;
    }
    close(y);
    struct flock g = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    if (fcntl(probe, F_OFD_GETLK, &g) < 0) fail("F_OFD_GETLK");
    if (g.l_type != F_UNLCK) {
        printf("FAIL: F_OFD_GETLK right after close() sees l_type %d\n", g.l_type);
        return 1;
    }
    r = child_try(path, 1, 0);
    if (r != 0) {
        printf("FAIL: another process did not get the lock at once after close() (%d)\n", r);
        return 1;
    }
    close(x);
    close(probe);
    printf("ok posix lock owner held across the crash, dropped by close\n");
    return 0;
}

struct linux_dirent64 {
    unsigned long long d_ino;
    long long d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static int rdir(const char *dir, int n, const char *gofile)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) fail("open dir");
    unsigned char *seen = calloc((size_t)n, 1);
    char buf[2048]; /* small: many getdents64 calls, many FUSE READDIRs */
    int calls = 0, total = 0;
    for (;;) {
        long got = syscall(SYS_getdents64, fd, buf, sizeof buf);
        if (got < 0) fail("getdents64");
        if (got == 0) break;
        for (long off = 0; off < got;) {
            struct linux_dirent64 *d = (struct linux_dirent64 *)(buf + off);
            off += d->d_reclen;
            if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0) continue;
            char *end;
            long i = d->d_name[0] == 'f' ? strtol(d->d_name + 1, &end, 10) : -1;
            if (i < 0 || i >= n || *end != '\0') {
                printf("FAIL: unexpected entry %s\n", d->d_name);
                return 1;
            }
            if (seen[i]++) {
                printf("FAIL: entry %s seen twice\n", d->d_name);
                return 1;
            }
            total++;
        }
        if (++calls == 1) {
            printf("HOLDING readdir %s after %d entries\n", dir, total);
            wait_for(gofile);
        }
    }
    for (int i = 0; i < n; i++) {
        if (!seen[i]) {
            printf("FAIL: entry f%d missing\n", i);
            return 1;
        }
    }
    printf("ok readdir of %d entries in %d calls, each exactly once, across the crash\n", total, calls);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && strcmp(argv[1], "ofd") == 0) return ofd(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "flock") == 0) return flk(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "readdir") == 0) return rdir(argv[2], atoi(argv[3]), argv[4]);
    if (argc == 4 && strcmp(argv[1], "owner") == 0) return owner(argv[2], argv[3]);
    fprintf(stderr, "usage: vfsk-hold ofd|flock|owner PATH GOFILE | readdir DIR N GOFILE\n");
    return 2;
}
