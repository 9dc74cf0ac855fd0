/*
 * vfsk-tool: guest-side POSIX test helper for the virtiofs-keeper E2E suite.
 *
 * Built on the host with `gcc -static -O2` and placed in the guest initramfs,
 * because busybox lacks most of the calls we must exercise through virtio-fs.
 *
 * Usage: vfsk-tool [-e ERRNO_NAME] <subcommand> [args...]
 *
 * Exit status:
 *   0  success (or, with -e, the operation failed with exactly that errno)
 *   1  failure; a line "vfsk-tool: <subcommand>: <what>: <strerror>" is printed
 *   2  usage error
 *   3  the operation is not supported (ENOSYS / EOPNOTSUPP from the kernel or
 *      the backend, or no hole reporting for seek-test). Callers decide whether
 *      that is acceptable for the backend under test.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif
#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif
#ifndef O_TMPFILE
#define O_TMPFILE (020000000 | O_DIRECTORY)
#endif
#define FUSE_SUPER_MAGIC 0x65735546

#define EXIT_FAIL 1
#define EXIT_USAGE 2
#define EXIT_UNSUPPORTED 3

static const char *g_cmd = "?";
static int g_expect = 0; /* expected errno for -e, 0 = none */

static const struct {
    const char *name;
    int value;
} errnames[] = {
    {"EPERM", EPERM},         {"ENOENT", ENOENT},     {"EIO", EIO},
    {"EBADF", EBADF},         {"EAGAIN", EAGAIN},     {"EWOULDBLOCK", EWOULDBLOCK},
    {"EACCES", EACCES},       {"EEXIST", EEXIST},     {"EXDEV", EXDEV},
    {"ENOTDIR", ENOTDIR},     {"EISDIR", EISDIR},     {"EINVAL", EINVAL},
    {"EFBIG", EFBIG},         {"ENOSPC", ENOSPC},     {"ERANGE", ERANGE},
    {"ENOSYS", ENOSYS},       {"ENOTEMPTY", ENOTEMPTY}, {"ELOOP", ELOOP},
    {"ENODATA", ENODATA},     {"ENOTSUP", ENOTSUP},   {"EOPNOTSUPP", EOPNOTSUPP},
    {"ENXIO", ENXIO},         {"EMLINK", EMLINK},     {"ENAMETOOLONG", ENAMETOOLONG},
    {"EBUSY", EBUSY},         {"ETXTBSY", ETXTBSY},   {"ENOLCK", ENOLCK},
    {"EDEADLK", EDEADLK},     {"E2BIG", E2BIG},       {"EROFS", EROFS},
};

static const char *errname(int e)
{
    for (size_t i = 0; i < sizeof(errnames) / sizeof(errnames[0]); i++)
        if (errnames[i].value == e)
            return errnames[i].name;
    return "E?";
}

static int parse_errname(const char *s)
{
    for (size_t i = 0; i < sizeof(errnames) / sizeof(errnames[0]); i++)
        if (strcmp(errnames[i].name, s) == 0)
            return errnames[i].value;
    char *end;
    long v = strtol(s, &end, 10);
    if (*s && !*end && v > 0)
        return (int)v;
    return -1;
}

static int is_unsupported(int e)
{
    return e == ENOSYS || e == EOPNOTSUPP || e == ENOTSUP;
}

/* A syscall failed with errno `e`. Terminates the process. */
static void __attribute__((noreturn)) sysfail_e(int e, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (g_expect) {
        if (e == g_expect) {
            printf("vfsk-tool: %s: %s: failed with %s as expected\n", g_cmd, what, errname(e));
            fflush(stdout);
            exit(0);
        }
        fprintf(stderr, "vfsk-tool: %s: %s: expected %s, got %s (%s)\n", g_cmd, what,
                errname(g_expect), errname(e), strerror(e));
        exit(EXIT_FAIL);
    }
    fprintf(stderr, "vfsk-tool: %s: %s: %s (%s)\n", g_cmd, what, strerror(e), errname(e));
    exit(is_unsupported(e) ? EXIT_UNSUPPORTED : EXIT_FAIL);
}

#define sysfail(...) sysfail_e(errno, __VA_ARGS__)

/* A check (not a syscall) failed. Terminates the process. */
static void __attribute__((noreturn)) checkfail(const char *fmt, ...)
{
    char what[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    fprintf(stderr, "vfsk-tool: %s: check failed: %s\n", g_cmd, what);
    exit(EXIT_FAIL);
}

/* The semantic "not supported" outcome that is not an errno. */
static void __attribute__((noreturn)) unsupported(const char *fmt, ...)
{
    char what[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    fprintf(stderr, "vfsk-tool: %s: unsupported: %s\n", g_cmd, what);
    exit(EXIT_UNSUPPORTED);
}

/* Expect a syscall to fail with `want`; report otherwise. */
#define EXPECT_ERR(want, call, ...)                                                         \
    do {                                                                                    \
        errno = 0;                                                                          \
        long r_ = (long)(call);                                                             \
        if (r_ >= 0)                                                                        \
            checkfail(__VA_ARGS__);                                                         \
        if (errno != (want))                                                                \
            sysfail_e(errno, "%s (expected %s)", #call, errname(want));                   \
    } while (0)

static void __attribute__((noreturn)) usage(void)
{
    fprintf(stderr,
            "usage: vfsk-tool [-e ERRNO] <subcommand> [args]\n"
            "  mkdir PATH [MODE] | rmdir PATH | unlink PATH | open PATH | create PATH\n"
            "  stat PATH | lstat PATH | rename OLD NEW | link OLD NEW | symlink TARGET PATH\n"
            "  readlink PATH | rename2 OLD NEW none|noreplace|exchange\n"
            "  setxattr PATH NAME VALUE [create|replace] | getxattr PATH NAME\n"
            "  listxattr PATH | removexattr PATH NAME | xattr-test PATH\n"
            "  flock-test PATH | ofd-test PATH | posixlock-test PATH | owners-test PATH ROUNDS\n"
            "  unlinked-test PATH | statfs PATH | mkfiles DIR N | checkdir DIR N\n"
            "  mkfifo PATH | utimens PATH ASEC ANSEC MSEC MNSEC | truncate-test PATH\n"
            "  fallocate-test PATH | seek-test PATH | copy-range-test SRC DST\n"
            "  tmpfile-test DIR | rw-test PATH | fsync PATH\n");
    exit(EXIT_USAGE);
}

static void need(int argc, int n)
{
    if (argc != n)
        usage();
}

static void write_all(int fd, const void *buf, size_t len, const char *what)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            sysfail("write %s", what);
        }
        if (n == 0)
            checkfail("write %s returned 0", what);
        p += n;
        len -= (size_t)n;
    }
}

static void pwrite_all(int fd, const void *buf, size_t len, off_t off, const char *what)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            sysfail("pwrite %s at %lld", what, (long long)off);
        }
        if (n == 0)
            checkfail("pwrite %s returned 0", what);
        p += n;
        len -= (size_t)n;
        off += n;
    }
}

/* Read exactly len bytes at off; returns the count read (short only at EOF). */
static size_t pread_full(int fd, void *buf, size_t len, off_t off, const char *what)
{
    char *p = buf;
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, p + got, len - got, off + (off_t)got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            sysfail("pread %s at %lld", what, (long long)(off + (off_t)got));
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return got;
}

static void expect_content(int fd, const void *want, size_t len, off_t off, const char *what)
{
    char *buf = malloc(len + 1);
    if (!buf)
        checkfail("out of memory");
    size_t got = pread_full(fd, buf, len, off, what);
    if (got != len)
        checkfail("%s: read %zu bytes at %lld, want %zu", what, got, (long long)off, len);
    if (memcmp(buf, want, len) != 0) {
        size_t i = 0;
        while (i < len && buf[i] == ((const char *)want)[i])
            i++;
        checkfail("%s: content differs at byte %zu (offset %lld)", what, i, (long long)off + (long long)i);
    }
    free(buf);
}

static void expect_zeros(int fd, off_t off, size_t len, const char *what)
{
    char *buf = malloc(len);
    if (!buf)
        checkfail("out of memory");
    size_t got = pread_full(fd, buf, len, off, what);
    if (got != len)
        checkfail("%s: read %zu bytes at %lld, want %zu", what, got, (long long)off, len);
    for (size_t i = 0; i < len; i++)
        if (buf[i] != 0)
            checkfail("%s: byte at offset %lld is 0x%02x, want 0", what, (long long)off + (long long)i,
                      (unsigned char)buf[i]);
    free(buf);
}

static void fill_pattern(char *buf, size_t len, unsigned seed)
{
    uint32_t x = seed * 2654435761u + 12345u;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buf[i] = (char)(x & 0xff);
    }
}

static struct stat xstat(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0)
        sysfail("stat %s", path);
    return st;
}

static struct stat xfstat(int fd, const char *what)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        sysfail("fstat %s", what);
    return st;
}

static const char *ftype(mode_t m)
{
    if (S_ISREG(m)) return "file";
    if (S_ISDIR(m)) return "dir";
    if (S_ISLNK(m)) return "symlink";
    if (S_ISFIFO(m)) return "fifo";
    if (S_ISSOCK(m)) return "socket";
    if (S_ISCHR(m)) return "chr";
    if (S_ISBLK(m)) return "blk";
    return "unknown";
}

static void print_stat(const struct stat *st)
{
    printf("type=%s mode=%04o uid=%u gid=%u size=%lld nlink=%lu ino=%llu blocks=%lld "
           "atime=%lld.%09ld mtime=%lld.%09ld ctime=%lld.%09ld\n",
           ftype(st->st_mode), (unsigned)(st->st_mode & 07777), (unsigned)st->st_uid, (unsigned)st->st_gid,
           (long long)st->st_size, (unsigned long)st->st_nlink, (unsigned long long)st->st_ino,
           (long long)st->st_blocks, (long long)st->st_atim.tv_sec, st->st_atim.tv_nsec,
           (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec, (long long)st->st_ctim.tv_sec,
           st->st_ctim.tv_nsec);
}

/* ---------------------------------------------------------------- simple ops */

static int cmd_simple(int argc, char **argv)
{
    const char *c = argv[0];
    if (!strcmp(c, "mkdir")) {
        if (argc != 2 && argc != 3)
            usage();
        mode_t mode = argc == 3 ? (mode_t)strtoul(argv[2], NULL, 8) : 0755;
        if (mkdir(argv[1], mode) < 0)
            sysfail("mkdir %s", argv[1]);
    } else if (!strcmp(c, "rmdir")) {
        need(argc, 2);
        if (rmdir(argv[1]) < 0)
            sysfail("rmdir %s", argv[1]);
    } else if (!strcmp(c, "unlink")) {
        need(argc, 2);
        if (unlink(argv[1]) < 0)
            sysfail("unlink %s", argv[1]);
    } else if (!strcmp(c, "open")) {
        need(argc, 2);
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0)
            sysfail("open %s", argv[1]);
        close(fd);
    } else if (!strcmp(c, "create")) {
        need(argc, 2);
        int fd = open(argv[1], O_CREAT | O_EXCL | O_WRONLY, 0644);
        if (fd < 0)
            sysfail("open(O_CREAT|O_EXCL) %s", argv[1]);
        close(fd);
    } else if (!strcmp(c, "stat") || !strcmp(c, "lstat")) {
        need(argc, 2);
        struct stat st;
        int r = !strcmp(c, "stat") ? stat(argv[1], &st) : lstat(argv[1], &st);
        if (r < 0)
            sysfail("%s %s", c, argv[1]);
        if (!g_expect)
            print_stat(&st);
    } else if (!strcmp(c, "rename")) {
        need(argc, 3);
        if (rename(argv[1], argv[2]) < 0)
            sysfail("rename %s -> %s", argv[1], argv[2]);
    } else if (!strcmp(c, "link")) {
        need(argc, 3);
        if (link(argv[1], argv[2]) < 0)
            sysfail("link %s -> %s", argv[1], argv[2]);
    } else if (!strcmp(c, "symlink")) {
        need(argc, 3);
        if (symlink(argv[1], argv[2]) < 0)
            sysfail("symlink %s at %s", argv[1], argv[2]);
    } else if (!strcmp(c, "readlink")) {
        need(argc, 2);
        char buf[PATH_MAX + 1];
        ssize_t n = readlink(argv[1], buf, PATH_MAX);
        if (n < 0)
            sysfail("readlink %s", argv[1]);
        buf[n] = 0;
        if (!g_expect)
            printf("%s\n", buf);
    } else if (!strcmp(c, "fsync")) {
        need(argc, 2);
        int fd = open(argv[1], O_RDWR);
        if (fd < 0)
            sysfail("open %s", argv[1]);
        if (fsync(fd) < 0)
            sysfail("fsync %s", argv[1]);
        if (fdatasync(fd) < 0)
            sysfail("fdatasync %s", argv[1]);
        close(fd);
    } else if (!strcmp(c, "rename2")) {
        need(argc, 4);
        unsigned flags;
        if (!strcmp(argv[3], "none"))
            flags = 0;
        else if (!strcmp(argv[3], "noreplace"))
            flags = RENAME_NOREPLACE;
        else if (!strcmp(argv[3], "exchange"))
            flags = RENAME_EXCHANGE;
        else
            usage();
        if (syscall(SYS_renameat2, AT_FDCWD, argv[1], AT_FDCWD, argv[2], flags) < 0)
            sysfail("renameat2(%s) %s -> %s", argv[3], argv[1], argv[2]);
    } else if (!strcmp(c, "mkfifo")) {
        need(argc, 2);
        if (mknod(argv[1], S_IFIFO | 0644, 0) < 0)
            sysfail("mknod(S_IFIFO) %s", argv[1]);
        struct stat st;
        if (lstat(argv[1], &st) < 0)
            sysfail("lstat %s", argv[1]);
        if (!S_ISFIFO(st.st_mode))
            checkfail("%s is %s, want fifo", argv[1], ftype(st.st_mode));
        /* A fifo on virtio-fs is a local kernel object: open both ends non-blocking
         * and move a few bytes through it. */
        int rfd = open(argv[1], O_RDONLY | O_NONBLOCK);
        if (rfd < 0)
            sysfail("open fifo for reading %s", argv[1]);
        int wfd = open(argv[1], O_WRONLY | O_NONBLOCK);
        if (wfd < 0)
            sysfail("open fifo for writing %s", argv[1]);
        write_all(wfd, "fifo!", 5, "fifo");
        char buf[8];
        ssize_t n = read(rfd, buf, sizeof buf);
        if (n != 5 || memcmp(buf, "fifo!", 5) != 0)
            checkfail("fifo round trip returned %zd bytes", n);
        close(wfd);
        close(rfd);
    } else if (!strcmp(c, "utimens")) {
        need(argc, 6);
        struct timespec ts[2];
        ts[0].tv_sec = strtoll(argv[2], NULL, 10);
        ts[0].tv_nsec = strtol(argv[3], NULL, 10);
        ts[1].tv_sec = strtoll(argv[4], NULL, 10);
        ts[1].tv_nsec = strtol(argv[5], NULL, 10);
        if (utimensat(AT_FDCWD, argv[1], ts, AT_SYMLINK_NOFOLLOW) < 0)
            sysfail("utimensat %s", argv[1]);
        struct stat st;
        if (lstat(argv[1], &st) < 0)
            sysfail("lstat %s", argv[1]);
        if (st.st_atim.tv_sec != ts[0].tv_sec || st.st_atim.tv_nsec != ts[0].tv_nsec)
            checkfail("atime is %lld.%09ld, want %lld.%09ld", (long long)st.st_atim.tv_sec,
                      st.st_atim.tv_nsec, (long long)ts[0].tv_sec, ts[0].tv_nsec);
        if (st.st_mtim.tv_sec != ts[1].tv_sec || st.st_mtim.tv_nsec != ts[1].tv_nsec)
            checkfail("mtime is %lld.%09ld, want %lld.%09ld", (long long)st.st_mtim.tv_sec,
                      st.st_mtim.tv_nsec, (long long)ts[1].tv_sec, ts[1].tv_nsec);
        /* UTIME_NOW on mtime, UTIME_OMIT on atime: atime must stay. */
        struct timespec ts2[2] = {{0, UTIME_OMIT}, {0, UTIME_NOW}};
        if (utimensat(AT_FDCWD, argv[1], ts2, 0) < 0)
            sysfail("utimensat(UTIME_OMIT, UTIME_NOW) %s", argv[1]);
        struct stat st2;
        if (lstat(argv[1], &st2) < 0)
            sysfail("lstat %s", argv[1]);
        if (st2.st_atim.tv_sec != ts[0].tv_sec || st2.st_atim.tv_nsec != ts[0].tv_nsec)
            checkfail("UTIME_OMIT changed atime");
        if (st2.st_mtim.tv_sec == ts[1].tv_sec && st2.st_mtim.tv_nsec == ts[1].tv_nsec)
            checkfail("UTIME_NOW did not change mtime");
        /* Put the requested times back so the host can check them. */
        if (utimensat(AT_FDCWD, argv[1], ts, AT_SYMLINK_NOFOLLOW) < 0)
            sysfail("utimensat %s (restore)", argv[1]);
    } else {
        return -1;
    }
    if (g_expect) {
        fprintf(stderr, "vfsk-tool: %s: succeeded, but %s was expected\n", c, errname(g_expect));
        exit(EXIT_FAIL);
    }
    return 0;
}

/* ---------------------------------------------------------------- xattrs */

static int cmd_xattr(int argc, char **argv)
{
    const char *c = argv[0];
    if (!strcmp(c, "setxattr")) {
        if (argc != 4 && argc != 5)
            usage();
        int flags = 0;
        if (argc == 5) {
            if (!strcmp(argv[4], "create"))
                flags = XATTR_CREATE;
            else if (!strcmp(argv[4], "replace"))
                flags = XATTR_REPLACE;
            else
                usage();
        }
        if (setxattr(argv[1], argv[2], argv[3], strlen(argv[3]), flags) < 0)
            sysfail("setxattr %s %s", argv[1], argv[2]);
    } else if (!strcmp(c, "getxattr")) {
        need(argc, 3);
        char buf[65536];
        ssize_t n = getxattr(argv[1], argv[2], buf, sizeof buf - 1);
        if (n < 0)
            sysfail("getxattr %s %s", argv[1], argv[2]);
        buf[n] = 0;
        if (!g_expect)
            printf("%s\n", buf);
    } else if (!strcmp(c, "listxattr")) {
        need(argc, 2);
        char buf[65536];
        ssize_t n = listxattr(argv[1], buf, sizeof buf);
        if (n < 0)
            sysfail("listxattr %s", argv[1]);
        if (!g_expect)
            for (ssize_t i = 0; i < n; i += (ssize_t)strlen(buf + i) + 1)
                printf("%s\n", buf + i);
    } else if (!strcmp(c, "removexattr")) {
        need(argc, 3);
        if (removexattr(argv[1], argv[2]) < 0)
            sysfail("removexattr %s %s", argv[1], argv[2]);
    } else if (!strcmp(c, "xattr-test")) {
        need(argc, 2);
        const char *p = argv[1];
        int fd = open(p, O_CREAT | O_RDWR, 0644);
        if (fd < 0)
            sysfail("open %s", p);
        close(fd);
        if (setxattr(p, "user.alpha", "one", 3, XATTR_CREATE) < 0)
            sysfail("setxattr user.alpha CREATE");
        EXPECT_ERR(EEXIST, setxattr(p, "user.alpha", "x", 1, XATTR_CREATE),
                   "setxattr CREATE on existing name succeeded");
        EXPECT_ERR(ENODATA, setxattr(p, "user.beta", "x", 1, XATTR_REPLACE),
                   "setxattr REPLACE on missing name succeeded");
        const char big[] = "a value with spaces, \001 binary \377 bytes and no NUL at the end";
        if (setxattr(p, "user.beta", big, sizeof big - 1, 0) < 0)
            sysfail("setxattr user.beta");
        if (setxattr(p, "user.alpha", "uno", 3, XATTR_REPLACE) < 0)
            sysfail("setxattr user.alpha REPLACE");
        ssize_t n = getxattr(p, "user.beta", NULL, 0);
        if (n < 0)
            sysfail("getxattr(size query) user.beta");
        if ((size_t)n != sizeof big - 1)
            checkfail("getxattr size query returned %zd, want %zu", n, sizeof big - 1);
        char small[4];
        EXPECT_ERR(ERANGE, getxattr(p, "user.beta", small, sizeof small),
                   "getxattr into a too-small buffer succeeded");
        char buf[256];
        n = getxattr(p, "user.beta", buf, sizeof buf);
        if (n < 0)
            sysfail("getxattr user.beta");
        if ((size_t)n != sizeof big - 1 || memcmp(buf, big, (size_t)n) != 0)
            checkfail("user.beta value differs");
        n = getxattr(p, "user.alpha", buf, sizeof buf);
        if (n < 0)
            sysfail("getxattr user.alpha");
        if (n != 3 || memcmp(buf, "uno", 3) != 0)
            checkfail("user.alpha is '%.*s', want 'uno'", (int)n, buf);
        EXPECT_ERR(ENODATA, getxattr(p, "user.gamma", buf, sizeof buf), "getxattr of a missing name succeeded");
        /* list: size query, then contents */
        ssize_t ln = listxattr(p, NULL, 0);
        if (ln < 0)
            sysfail("listxattr(size query)");
        char list[4096];
        ssize_t l = listxattr(p, list, sizeof list);
        if (l < 0)
            sysfail("listxattr");
        if (l != ln)
            checkfail("listxattr size query %zd != list length %zd", ln, l);
        int sa = 0, sb = 0;
        for (ssize_t i = 0; i < l; i += (ssize_t)strlen(list + i) + 1) {
            if (!strcmp(list + i, "user.alpha"))
                sa++;
            if (!strcmp(list + i, "user.beta"))
                sb++;
        }
        if (sa != 1 || sb != 1)
            checkfail("listxattr saw user.alpha %d times, user.beta %d times", sa, sb);
        if (l > 1) {
            EXPECT_ERR(ERANGE, listxattr(p, list, 1), "listxattr into a 1-byte buffer succeeded");
        }
        if (removexattr(p, "user.alpha") < 0)
            sysfail("removexattr user.alpha");
        EXPECT_ERR(ENODATA, removexattr(p, "user.alpha"), "removexattr of a removed name succeeded");
        EXPECT_ERR(ENODATA, getxattr(p, "user.alpha", buf, sizeof buf), "removed xattr still readable");
        l = listxattr(p, list, sizeof list);
        if (l < 0)
            sysfail("listxattr");
        for (ssize_t i = 0; i < l; i += (ssize_t)strlen(list + i) + 1)
            if (!strcmp(list + i, "user.alpha"))
                checkfail("listxattr still shows user.alpha after removexattr");
        /* fd-based variants */
        fd = open(p, O_RDONLY);
        if (fd < 0)
            sysfail("open %s", p);
        if (fsetxattr(fd, "user.fd", "via-fd", 6, 0) < 0)
            sysfail("fsetxattr user.fd");
        n = fgetxattr(fd, "user.fd", buf, sizeof buf);
        if (n != 6 || memcmp(buf, "via-fd", 6) != 0)
            checkfail("fgetxattr user.fd returned %zd", n);
        if (fremovexattr(fd, "user.fd") < 0)
            sysfail("fremovexattr user.fd");
        close(fd);
    } else {
        return -1;
    }
    if (g_expect) {
        fprintf(stderr, "vfsk-tool: %s: succeeded, but %s was expected\n", c, errname(g_expect));
        exit(EXIT_FAIL);
    }
    return 0;
}

/* ---------------------------------------------------------------- locks */

static int open_rw(const char *p)
{
    int fd = open(p, O_CREAT | O_RDWR, 0644);
    if (fd < 0)
        sysfail("open %s", p);
    return fd;
}

/*
 * Blocking-lock phase: a child opens `p` itself and asks for a blocking lock (`kind`:
 * 'f' flock LOCK_EX, 'p' F_SETLKW, 'o' F_OFD_SETLKW, whole file) that conflicts with the
 * lock the caller holds on `held`. The child must not get it while the caller holds it, and
 * must get it once `release(held)` runs. The child gives up after 60 s (SIGALRM).
 */
static void blocking_phase(const char *p, char kind, int held, void (*release)(int))
{
    int ready[2];
    if (pipe(ready) < 0)
        sysfail("pipe");
    pid_t pid = fork();
    if (pid < 0)
        sysfail("fork");
    if (pid == 0) {
        close(ready[0]);
        alarm(60);
        int c = open(p, O_RDWR);
        if (c < 0)
            _exit(20);
        if (write(ready[1], "r", 1) != 1)
            _exit(21);
        int r;
        if (kind == 'f') {
            r = flock(c, LOCK_EX);
        } else {
            struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
            r = fcntl(c, kind == 'p' ? F_SETLKW : F_OFD_SETLKW, &fl);
        }
        if (r < 0) {
            fprintf(stderr, "vfsk-tool: %s: child: blocking %s lock: %s (%s)\n", g_cmd,
                    kind == 'f' ? "flock" : kind == 'p' ? "F_SETLKW" : "F_OFD_SETLKW", strerror(errno),
                    errname(errno));
            _exit(is_unsupported(errno) ? 23 : 22);
        }
        _exit(0);
    }
    close(ready[1]);
    char ch;
    if (read(ready[0], &ch, 1) != 1)
        checkfail("blocking-lock child died before asking for the lock");
    close(ready[0]);
    /* Give the child time to block. Correctness does not depend on it: if the child has
     * not asked yet, it simply gets the lock after the release. */
    usleep(200000);
    int status;
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w < 0)
        sysfail("waitpid");
    if (w == pid)
        checkfail("blocking lock in a child returned (status %d) while the conflicting lock was still held",
                  WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    release(held);
    if (waitpid(pid, &status, 0) < 0)
        sysfail("waitpid");
    if (WIFSIGNALED(status))
        checkfail("blocking lock in a child never returned after the release (killed by signal %d)",
                  WTERMSIG(status));
    if (WEXITSTATUS(status) == 23) {
        errno = EOPNOTSUPP;
        sysfail("blocking lock in a child");
    }
    if (WEXITSTATUS(status) != 0)
        checkfail("blocking lock in a child failed with exit status %d", WEXITSTATUS(status));
}

static void release_flock(int fd)
{
    if (flock(fd, LOCK_UN) < 0)
        sysfail("flock(LOCK_UN) to release the child");
}

static void release_posix(int fd)
{
    struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    if (fcntl(fd, F_SETLK, &fl) < 0)
        sysfail("F_SETLK(UNLCK) to release the child");
}

static void release_ofd(int fd)
{
    struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    if (fcntl(fd, F_OFD_SETLK, &fl) < 0)
        sysfail("F_OFD_SETLK(UNLCK) to release the child");
}

static void cmd_flock_test(const char *p)
{
    int a = open_rw(p), b = open_rw(p);
    if (flock(a, LOCK_EX | LOCK_NB) < 0)
        sysfail("flock(a, LOCK_EX)");
    EXPECT_ERR(EWOULDBLOCK, flock(b, LOCK_EX | LOCK_NB), "second LOCK_EX on another open file succeeded");
    EXPECT_ERR(EWOULDBLOCK, flock(b, LOCK_SH | LOCK_NB), "LOCK_SH while another holds LOCK_EX succeeded");
    /* A child process sees the conflict too. */
    pid_t pid = fork();
    if (pid < 0)
        sysfail("fork");
    if (pid == 0) {
        int c = open(p, O_RDWR);
        if (c < 0)
            _exit(10);
        if (flock(c, LOCK_EX | LOCK_NB) == 0)
            _exit(11);
        _exit(errno == EWOULDBLOCK ? 0 : 12);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0)
        sysfail("waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        checkfail("child process flock conflict check returned status %d", status);
    if (flock(a, LOCK_UN) < 0)
        sysfail("flock(a, LOCK_UN)");
    if (flock(b, LOCK_EX | LOCK_NB) < 0)
        sysfail("flock(b, LOCK_EX) after a unlocked");
    if (flock(b, LOCK_SH | LOCK_NB) < 0)
        sysfail("flock(b) convert to LOCK_SH");
    if (flock(a, LOCK_SH | LOCK_NB) < 0)
        sysfail("flock(a, LOCK_SH) alongside b's LOCK_SH");
    close(b);
    /* closing b released its lock, a can upgrade */
    if (flock(a, LOCK_EX | LOCK_NB) < 0)
        sysfail("flock(a, LOCK_EX) after b was closed");
    /* a blocking flock in another process waits for a's release */
    blocking_phase(p, 'f', a, release_flock);
    close(a);
}

static void setlk(int fd, int cmd, short type, off_t start, off_t len, const char *what)
{
    struct flock fl = {0};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = start;
    fl.l_len = len;
    if (fcntl(fd, cmd, &fl) < 0)
        sysfail("%s", what);
}

static int trylk(int fd, int cmd, short type, off_t start, off_t len)
{
    struct flock fl = {0};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = start;
    fl.l_len = len;
    return fcntl(fd, cmd, &fl) < 0 ? errno : 0;
}

static void getlk_expect(int fd, int cmd, short type, off_t start, off_t len, short want_type, pid_t want_pid,
                         const char *what)
{
    struct flock fl = {0};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = start;
    fl.l_len = len;
    if (fcntl(fd, cmd, &fl) < 0)
        sysfail("%s", what);
    if (fl.l_type != want_type)
        checkfail("%s: l_type %d, want %d", what, fl.l_type, want_type);
    if (want_type != F_UNLCK && want_pid != 0 && fl.l_pid != want_pid)
        checkfail("%s: l_pid %d, want %d", what, (int)fl.l_pid, (int)want_pid);
}

static void cmd_ofd_test(const char *p)
{
    int a = open_rw(p), b = open_rw(p);
    setlk(a, F_OFD_SETLK, F_WRLCK, 0, 100, "F_OFD_SETLK(a, WRLCK 0..100)");
    int e = trylk(b, F_OFD_SETLK, F_WRLCK, 50, 10);
    if (e != EAGAIN)
        e ? sysfail_e(e, "F_OFD_SETLK(b, WRLCK 50..60) (expected EAGAIN)")
          : checkfail("conflicting OFD write lock on another open file succeeded");
    e = trylk(b, F_OFD_SETLK, F_RDLCK, 0, 1);
    if (e != EAGAIN)
        e ? sysfail_e(e, "F_OFD_SETLK(b, RDLCK 0..1) (expected EAGAIN)")
          : checkfail("OFD read lock over another's write lock succeeded");
    /* OFD GETLK reports the conflicting lock with l_pid = -1 */
    getlk_expect(b, F_OFD_GETLK, F_WRLCK, 10, 5, F_WRLCK, -1, "F_OFD_GETLK(b)");
    /* non-overlapping range is fine */
    setlk(b, F_OFD_SETLK, F_WRLCK, 200, 10, "F_OFD_SETLK(b, WRLCK 200..210)");
    /* same open file description may re-lock its own range (no self-conflict) */
    setlk(a, F_OFD_SETLK, F_RDLCK, 0, 100, "F_OFD_SETLK(a) downgrade to RDLCK");
    setlk(b, F_OFD_SETLK, F_RDLCK, 0, 100, "F_OFD_SETLK(b, RDLCK 0..100) beside a's RDLCK");
    e = trylk(b, F_OFD_SETLK, F_WRLCK, 0, 100);
    if (e != EAGAIN)
        e ? sysfail_e(e, "F_OFD_SETLK(b, WRLCK) upgrade (expected EAGAIN)")
          : checkfail("upgrading to a write lock over another's read lock succeeded");
    setlk(a, F_OFD_SETLK, F_UNLCK, 0, 0, "F_OFD_SETLK(a, UNLCK)");
    setlk(b, F_OFD_SETLK, F_WRLCK, 0, 100, "F_OFD_SETLK(b, WRLCK 0..100) after a unlocked");
    getlk_expect(a, F_OFD_GETLK, F_WRLCK, 0, 0, F_WRLCK, -1, "F_OFD_GETLK(a) sees b's lock");
    /* closing b drops its OFD locks */
    close(b);
    getlk_expect(a, F_OFD_GETLK, F_WRLCK, 0, 0, F_UNLCK, 0, "F_OFD_GETLK(a) after b closed");
    setlk(a, F_OFD_SETLK, F_WRLCK, 0, 0, "F_OFD_SETLK(a, WRLCK whole file) after b closed");
    blocking_phase(p, 'o', a, release_ofd);
    close(a);
}

/* A child process tries F_SETLK(WRLCK 0..100) on p: want_errno 0 = it must get the lock at
 * once; otherwise it must be refused and F_GETLK must name want_holder as the holder. */
static void child_lock_expect(const char *p, int want_errno, pid_t want_holder, const char *what)
{
    pid_t pid = fork();
    if (pid < 0)
        sysfail("fork");
    if (pid == 0) {
        int c = open(p, O_RDWR);
        if (c < 0)
            _exit(10);
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100};
        int e = fcntl(c, F_SETLK, &fl) < 0 ? errno : 0;
        if (want_errno == 0)
            _exit(e == 0 ? 0 : 20);
        if (e != EAGAIN && e != EACCES)
            _exit(21);
        fl = (struct flock){.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
        if (fcntl(c, F_GETLK, &fl) < 0)
            _exit(22);
        if (fl.l_type != F_WRLCK)
            _exit(23);
        if (fl.l_pid != want_holder)
            _exit(24);
        _exit(0);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0)
        sysfail("waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        checkfail("%s: child check failed (status %d: 20 not granted, 21 not refused, 23 no lock seen, 24 wrong pid)",
                  what, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

/* POSIX lock owners, ROUNDS times: one process locks the same range through two fds (no
 * conflict: one owner), another process is refused and F_GETLK names us; closing either fd
 * drops the lock (POSIX: any close drops the process's locks on the file), so F_OFD_GETLK
 * right after close() sees nothing and another process or open file gets the range at once. */
static void cmd_owners_test(const char *p, long rounds)
{
    char what[96];
    int probe = open_rw(p);
    for (long i = 0; i < rounds; i++) {
        int x = open_rw(p), y = open_rw(p);
        setlk(x, F_SETLK, F_WRLCK, 0, 100, "F_SETLK(x, WRLCK 0..100)");
        setlk(y, F_SETLK, F_WRLCK, 0, 100, "F_SETLK(y, WRLCK 0..100): same process, no conflict");
        if (i % 100 == 0) {
            snprintf(what, sizeof what, "round %ld: another process while we hold it", i);
            child_lock_expect(p, EAGAIN, getpid(), what);
            snprintf(what, sizeof what, "round %ld: F_OFD_GETLK(probe) while we hold it", i);
            getlk_expect(probe, F_OFD_GETLK, F_WRLCK, 0, 0, F_WRLCK, 0, what);
        }
        close(i % 2 ? x : y);
        snprintf(what, sizeof what, "round %ld: F_OFD_GETLK right after close()", i);
        getlk_expect(probe, F_OFD_GETLK, F_WRLCK, 0, 0, F_UNLCK, 0, what);
        if (i % 100 == 0) {
            snprintf(what, sizeof what, "round %ld: another process right after close()", i);
            child_lock_expect(p, 0, 0, what);
        }
        setlk(probe, F_OFD_SETLK, F_WRLCK, 0, 100, "F_OFD_SETLK(probe) right after close()");
        setlk(probe, F_OFD_SETLK, F_UNLCK, 0, 0, "F_OFD_SETLK(probe, UNLCK)");
        close(i % 2 ? y : x);
    }
    close(probe);
}

static void cmd_posixlock_test(const char *p)
{
    int a = open_rw(p);
    setlk(a, F_SETLK, F_WRLCK, 0, 4096, "F_SETLK(WRLCK 0..4096)");
    int go[2], ready[2];
    if (pipe(go) < 0 || pipe(ready) < 0)
        sysfail("pipe");
    pid_t pid = fork();
    if (pid < 0)
        sysfail("fork");
    if (pid == 0) {
        /* child: conflicts with the parent; GETLK reports the parent's pid */
        close(go[1]);
        close(ready[0]);
        int c = open(p, O_RDWR);
        if (c < 0)
            _exit(10);
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 1};
        if (fcntl(c, F_SETLK, &fl) == 0)
            _exit(11);
        if (errno != EAGAIN && errno != EACCES)
            _exit(12);
        fl = (struct flock){.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
        if (fcntl(c, F_GETLK, &fl) < 0)
            _exit(13);
        if (fl.l_type != F_WRLCK || fl.l_pid != getppid())
            _exit(14);
        fl = (struct flock){.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 8192, .l_len = 10};
        if (fcntl(c, F_SETLK, &fl) < 0)
            _exit(15);
        /* tell the parent, wait for it to unlock, then take the range */
        char ch = 'r';
        if (write(ready[1], &ch, 1) != 1)
            _exit(16);
        if (read(go[0], &ch, 1) != 1)
            _exit(17);
        fl = (struct flock){.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 4096};
        if (fcntl(c, F_SETLK, &fl) < 0)
            _exit(18);
        _exit(0);
    }
    close(go[0]);
    close(ready[1]);
    char ch;
    ssize_t n = read(ready[0], &ch, 1);
    if (n == 1) {
        /* the child's lock on 8192..8202 conflicts with us now */
        int e = trylk(a, F_SETLK, F_WRLCK, 8195, 1);
        if (e != EAGAIN && e != EACCES)
            e ? sysfail_e(e, "F_SETLK over the child's lock (expected EAGAIN)")
              : checkfail("F_SETLK over the child's lock succeeded");
        setlk(a, F_SETLK, F_UNLCK, 0, 0, "F_SETLK(UNLCK)");
        if (write(go[1], "g", 1) != 1)
            sysfail("write pipe");
    }
    close(go[1]);
    close(ready[0]);
    int status;
    if (waitpid(pid, &status, 0) < 0)
        sysfail("waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        checkfail("child posix lock checks failed with exit status %d (see the _exit codes in vfsk-tool.c)",
                  WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    /* the child exited: its locks are gone */
    setlk(a, F_SETLK, F_WRLCK, 0, 0, "F_SETLK(WRLCK whole file) after the child exited");
    blocking_phase(p, 'p', a, release_posix);
    close(a);
}

/* ---------------------------------------------------------------- files */

static void cmd_unlinked_test(const char *p)
{
    static const char msg[] = "still here after unlink\n";
    int w = open(p, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (w < 0)
        sysfail("create %s", p);
    write_all(w, msg, sizeof msg - 1, p);
    close(w);
    int r = open(p, O_RDWR);
    if (r < 0)
        sysfail("open %s", p);
    if (unlink(p) < 0)
        sysfail("unlink %s", p);
    struct stat st;
    errno = 0;
    if (stat(p, &st) == 0)
        checkfail("%s still exists after unlink", p);
    if (errno != ENOENT)
        sysfail("stat %s after unlink (expected ENOENT)", p);
    expect_content(r, msg, sizeof msg - 1, 0, "unlinked file");
    st = xfstat(r, "unlinked file");
    if (st.st_nlink != 0)
        checkfail("unlinked file has nlink %lu, want 0", (unsigned long)st.st_nlink);
    /* still writable, and reads see the write */
    pwrite_all(r, "MORE", 4, (off_t)(sizeof msg - 1), "unlinked file");
    expect_content(r, "still here after unlink\nMORE", sizeof msg - 1 + 4, 0, "unlinked file after write");
    /* a new file with the same name is a different file */
    w = open(p, O_CREAT | O_EXCL | O_WRONLY, 0644);
    if (w < 0)
        sysfail("re-create %s", p);
    write_all(w, "new", 3, p);
    close(w);
    expect_content(r, "still here after unlink\nMORE", sizeof msg - 1 + 4, 0, "unlinked file after re-create");
    close(r);
    if (unlink(p) < 0)
        sysfail("unlink %s", p);
}

static void cmd_statfs(const char *p)
{
    struct statfs s;
    if (statfs(p, &s) < 0)
        sysfail("statfs %s", p);
    printf("f_type=0x%lx f_bsize=%ld f_blocks=%llu f_bfree=%llu f_bavail=%llu f_files=%llu f_ffree=%llu "
           "f_namelen=%ld\n",
           (unsigned long)s.f_type, (long)s.f_bsize, (unsigned long long)s.f_blocks,
           (unsigned long long)s.f_bfree, (unsigned long long)s.f_bavail, (unsigned long long)s.f_files,
           (unsigned long long)s.f_ffree, (long)s.f_namelen);
    if ((unsigned long)s.f_type != FUSE_SUPER_MAGIC)
        checkfail("f_type 0x%lx, want FUSE_SUPER_MAGIC 0x%x", (unsigned long)s.f_type, FUSE_SUPER_MAGIC);
    if (s.f_blocks == 0 || s.f_bsize <= 0)
        checkfail("statfs reports no blocks (f_blocks %llu, f_bsize %ld)", (unsigned long long)s.f_blocks,
                  (long)s.f_bsize);
    if (s.f_bfree > s.f_blocks || s.f_bavail > s.f_blocks)
        checkfail("statfs free (%llu/%llu) exceeds total %llu", (unsigned long long)s.f_bfree,
                  (unsigned long long)s.f_bavail, (unsigned long long)s.f_blocks);
    if (s.f_namelen < 255)
        checkfail("f_namelen %ld < 255", (long)s.f_namelen);
}

static void cmd_mkfiles(const char *dir, long n)
{
    char path[PATH_MAX];
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/f%05ld", dir, i);
        int fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0644);
        if (fd < 0)
            sysfail("create %s", path);
        if (close(fd) < 0)
            sysfail("close %s", path);
    }
}

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* Check DIR holds exactly f00000..f(N-1), each once, plus "." and "..". */
static void check_seen(unsigned char *seen, long n, int dots[2], const char *how)
{
    for (long i = 0; i < n; i++)
        if (seen[i] != 1)
            checkfail("%s: f%05ld seen %u times, want once", how, i, seen[i]);
    if (dots[0] != 1 || dots[1] != 1)
        checkfail("%s: '.' seen %d times, '..' %d times, want once each", how, dots[0], dots[1]);
}

static void account(const char *name, unsigned char *seen, long n, int dots[2], const char *how)
{
    if (!strcmp(name, ".")) {
        dots[0]++;
        return;
    }
    if (!strcmp(name, "..")) {
        dots[1]++;
        return;
    }
    char *end;
    if (name[0] != 'f' || strlen(name) != 6)
        checkfail("%s: unexpected entry '%s'", how, name);
    long i = strtol(name + 1, &end, 10);
    if (*end || i < 0 || i >= n)
        checkfail("%s: unexpected entry '%s'", how, name);
    if (seen[i] < 255)
        seen[i]++;
}

static void cmd_checkdir(const char *dir, long n)
{
    unsigned char *seen = calloc((size_t)n, 1);
    if (!seen)
        checkfail("out of memory");
    int dots[2] = {0, 0};
    long count = 0;

    /* 1: libc readdir (large getdents buffer), with d_type checks */
    DIR *d = opendir(dir);
    if (!d)
        sysfail("opendir %s", dir);
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d)) != NULL) {
        account(de->d_name, seen, n, dots, "readdir");
        if (de->d_name[0] == 'f' && de->d_type != DT_REG && de->d_type != DT_UNKNOWN)
            checkfail("readdir: %s has d_type %u, want DT_REG", de->d_name, de->d_type);
        count++;
        errno = 0;
    }
    if (errno)
        sysfail("readdir %s", dir);
    check_seen(seen, n, dots, "readdir");
    /* 2: rewind and read again through the same handle */
    memset(seen, 0, (size_t)n);
    dots[0] = dots[1] = 0;
    rewinddir(d);
    errno = 0;
    while ((de = readdir(d)) != NULL) {
        account(de->d_name, seen, n, dots, "readdir after rewinddir");
        errno = 0;
    }
    if (errno)
        sysfail("readdir %s after rewinddir", dir);
    check_seen(seen, n, dots, "readdir after rewinddir");
    closedir(d);

    /* 3: raw getdents64 with a tiny buffer: many continuation offsets */
    memset(seen, 0, (size_t)n);
    dots[0] = dots[1] = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        sysfail("open %s", dir);
    char buf[512] __attribute__((aligned(8)));
    long calls = 0;
    for (;;) {
        long got = syscall(SYS_getdents64, fd, buf, sizeof buf);
        if (got < 0)
            sysfail("getdents64 %s", dir);
        if (got == 0)
            break;
        calls++;
        for (long off = 0; off < got;) {
            struct linux_dirent64 *e = (struct linux_dirent64 *)(buf + off);
            account(e->d_name, seen, n, dots, "getdents64(512)");
            off += e->d_reclen;
        }
    }
    close(fd);
    check_seen(seen, n, dots, "getdents64(512)");
    free(seen);
    printf("checkdir: %ld entries (+2) each seen once via readdir, rewinddir and %ld getdents64 calls\n",
           count - 2, calls);
}

static void cmd_truncate_test(const char *p)
{
    char data[10000];
    fill_pattern(data, sizeof data, 7);
    int fd = open(p, O_CREAT | O_TRUNC | O_RDWR, 0644);
    if (fd < 0)
        sysfail("create %s", p);
    write_all(fd, data, sizeof data, p);
    /* shrink by path */
    if (truncate(p, 3000) < 0)
        sysfail("truncate(%s, 3000)", p);
    struct stat st = xfstat(fd, p);
    if (st.st_size != 3000)
        checkfail("size after truncate(3000) is %lld", (long long)st.st_size);
    expect_content(fd, data, 3000, 0, "after shrink");
    /* grow by fd */
    if (ftruncate(fd, 20000) < 0)
        sysfail("ftruncate(%s, 20000)", p);
    st = xstat(p);
    if (st.st_size != 20000)
        checkfail("size after ftruncate(20000) is %lld", (long long)st.st_size);
    expect_content(fd, data, 3000, 0, "after grow (old part)");
    expect_zeros(fd, 3000, 17000, "after grow (new part)");
    /* truncate to zero then write again */
    if (ftruncate(fd, 0) < 0)
        sysfail("ftruncate(%s, 0)", p);
    st = xfstat(fd, p);
    if (st.st_size != 0)
        checkfail("size after ftruncate(0) is %lld", (long long)st.st_size);
    pwrite_all(fd, "abc", 3, 5, p);
    expect_content(fd, "\0\0\0\0\0abc", 8, 0, "write past EOF after truncate");
    /* O_TRUNC on open */
    close(fd);
    fd = open(p, O_WRONLY | O_TRUNC);
    if (fd < 0)
        sysfail("open(O_TRUNC) %s", p);
    close(fd);
    st = xstat(p);
    if (st.st_size != 0)
        checkfail("size after O_TRUNC is %lld", (long long)st.st_size);
}

static void cmd_rw_test(const char *p)
{
    enum { N = 300000 };
    char *data = malloc(N);
    if (!data)
        checkfail("out of memory");
    fill_pattern(data, N, 11);
    int fd = open(p, O_CREAT | O_TRUNC | O_RDWR, 0644);
    if (fd < 0)
        sysfail("create %s", p);
    /* unaligned chunked writes */
    for (size_t off = 0; off < N;) {
        size_t len = 4093;
        if (off + len > N)
            len = N - off;
        pwrite_all(fd, data + off, len, (off_t)off, p);
        off += len;
    }
    expect_content(fd, data, N, 0, "whole file");
    expect_content(fd, data + 12345, 777, 12345, "unaligned middle read");
    /* overwrite in the middle */
    pwrite_all(fd, "OVERWRITE", 9, 65530, p);
    memcpy(data + 65530, "OVERWRITE", 9);
    expect_content(fd, data, N, 0, "after overwrite");
    /* reading at EOF gives 0 */
    char c;
    ssize_t r = pread(fd, &c, 1, N);
    if (r != 0)
        checkfail("pread at EOF returned %zd", r);
    close(fd);
    /* O_APPEND writes always land at the end, whatever the offset */
    fd = open(p, O_WRONLY | O_APPEND);
    if (fd < 0)
        sysfail("open(O_APPEND) %s", p);
    if (lseek(fd, 0, SEEK_SET) < 0)
        sysfail("lseek");
    write_all(fd, "TAIL1", 5, p);
    write_all(fd, "TAIL2", 5, p);
    close(fd);
    fd = open(p, O_RDONLY);
    if (fd < 0)
        sysfail("open %s", p);
    expect_content(fd, data, 100, 0, "head after append");
    expect_content(fd, "TAIL1TAIL2", 10, N, "appended tail");
    struct stat st = xfstat(fd, p);
    if (st.st_size != N + 10)
        checkfail("size after appends is %lld, want %d", (long long)st.st_size, N + 10);
    close(fd);
    free(data);
}

static void cmd_fallocate_test(const char *p)
{
    int fd = open(p, O_CREAT | O_TRUNC | O_RDWR, 0644);
    if (fd < 0)
        sysfail("create %s", p);
    /* mode 0: allocate and extend */
    if (fallocate(fd, 0, 0, 1 << 20) < 0)
        sysfail("fallocate(0, 0, 1MiB)");
    struct stat st = xfstat(fd, p);
    if (st.st_size != 1 << 20)
        checkfail("size after fallocate(1MiB) is %lld", (long long)st.st_size);
    if (st.st_blocks * 512 < (1 << 20))
        checkfail("fallocate(1MiB) allocated only %lld bytes", (long long)st.st_blocks * 512);
    expect_zeros(fd, 0, 1 << 20, "fallocated range");
    /* KEEP_SIZE beyond EOF: size unchanged */
    if (fallocate(fd, FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20) < 0)
        sysfail("fallocate(KEEP_SIZE, 1MiB, 1MiB)");
    st = xfstat(fd, p);
    if (st.st_size != 1 << 20)
        checkfail("size after fallocate(KEEP_SIZE) is %lld, want 1MiB", (long long)st.st_size);
    /* PUNCH_HOLE: data becomes zeros, size unchanged */
    char data[65536];
    memset(data, 0x5a, sizeof data);
    pwrite_all(fd, data, sizeof data, 0, p);
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192) < 0)
        sysfail("fallocate(PUNCH_HOLE|KEEP_SIZE, 4096, 8192)");
    st = xfstat(fd, p);
    if (st.st_size != 1 << 20)
        checkfail("size after punch hole is %lld, want 1MiB", (long long)st.st_size);
    expect_content(fd, data, 4096, 0, "before the hole");
    expect_zeros(fd, 4096, 8192, "punched hole");
    expect_content(fd, data, sizeof data - 12288, 12288, "after the hole");
    close(fd);
}

static void cmd_seek_test(const char *p)
{
    const off_t far = 8 << 20; /* 8 MiB: far beyond any fs block size */
    int fd = open(p, O_CREAT | O_TRUNC | O_RDWR, 0644);
    if (fd < 0)
        sysfail("create %s", p);
    char blk[4096];
    memset(blk, 'D', sizeof blk);
    pwrite_all(fd, blk, sizeof blk, 0, p);
    pwrite_all(fd, blk, sizeof blk, far, p);
    if (fsync(fd) < 0)
        sysfail("fsync %s", p);
    const off_t size = far + (off_t)sizeof blk;
    off_t r = lseek(fd, 0, SEEK_DATA);
    if (r < 0)
        sysfail("lseek(0, SEEK_DATA)");
    if (r != 0)
        checkfail("SEEK_DATA from 0 returned %lld, want 0", (long long)r);
    r = lseek(fd, 0, SEEK_HOLE);
    if (r < 0)
        sysfail("lseek(0, SEEK_HOLE)");
    if (r == size)
        unsupported("SEEK_HOLE from 0 returned EOF (%lld): the file system reports no holes "
                    "(kernel's generic llseek fallback, i.e. no FUSE_LSEEK)",
                    (long long)r);
    if (r < (off_t)sizeof blk || r > far)
        checkfail("SEEK_HOLE from 0 returned %lld, want within [4096, %lld]", (long long)r, (long long)far);
    r = lseek(fd, 65536, SEEK_DATA);
    if (r < 0)
        sysfail("lseek(65536, SEEK_DATA)");
    if (r < 65536 || r > far)
        checkfail("SEEK_DATA from 64KiB returned %lld, want within [65536, %lld]", (long long)r,
                  (long long)far);
    r = lseek(fd, far, SEEK_HOLE);
    if (r < 0)
        sysfail("lseek(far, SEEK_HOLE)");
    if (r != size)
        checkfail("SEEK_HOLE from the last block returned %lld, want EOF %lld", (long long)r, (long long)size);
    errno = 0;
    r = lseek(fd, size, SEEK_DATA);
    if (r >= 0)
        checkfail("SEEK_DATA at EOF returned %lld, want ENXIO", (long long)r);
    if (errno != ENXIO)
        sysfail("lseek(EOF, SEEK_DATA) (expected ENXIO)");
    /* plain SEEK_END/SEEK_CUR */
    r = lseek(fd, -10, SEEK_END);
    if (r != size - 10)
        checkfail("SEEK_END-10 returned %lld", (long long)r);
    close(fd);
}

static void cmd_copy_range_test(const char *src, const char *dst)
{
    enum { N = 1 << 20 };
    char *data = malloc(N);
    if (!data)
        checkfail("out of memory");
    fill_pattern(data, N, 23);
    int in = open(src, O_CREAT | O_TRUNC | O_RDWR, 0644);
    if (in < 0)
        sysfail("create %s", src);
    write_all(in, data, N, src);
    int out = open(dst, O_CREAT | O_TRUNC | O_RDWR, 0644);
    if (out < 0)
        sysfail("create %s", dst);
    /* whole file, with explicit offsets */
    loff_t io = 0, oo = 0;
    size_t left = N;
    while (left > 0) {
        ssize_t n = copy_file_range(in, &io, out, &oo, left, 0);
        if (n < 0)
            sysfail("copy_file_range");
        if (n == 0)
            checkfail("copy_file_range returned 0 with %zu bytes left", left);
        left -= (size_t)n;
    }
    expect_content(out, data, N, 0, "copied file");
    /* a sub-range into the middle of dst, using file offsets */
    if (lseek(in, 1000, SEEK_SET) < 0 || lseek(out, 500000, SEEK_SET) < 0)
        sysfail("lseek");
    ssize_t n = copy_file_range(in, NULL, out, NULL, 3333, 0);
    if (n != 3333)
        n < 0 ? sysfail("copy_file_range (file offsets)") : checkfail("short copy_file_range %zd", n);
    memcpy(data + 500000, data + 1000, 3333);
    expect_content(out, data, N, 0, "after sub-range copy");
    off_t pos = lseek(out, 0, SEEK_CUR);
    if (pos != 500000 + 3333)
        checkfail("dst offset after copy_file_range is %lld", (long long)pos);
    close(in);
    close(out);
    free(data);
}

static void cmd_tmpfile_test(const char *dir)
{
    int fd = open(dir, O_TMPFILE | O_RDWR, 0600);
    if (fd < 0)
        sysfail("open(%s, O_TMPFILE)", dir);
    static const char msg[] = "anonymous until linked\n";
    write_all(fd, msg, sizeof msg - 1, "tmpfile");
    expect_content(fd, msg, sizeof msg - 1, 0, "tmpfile");
    struct stat st = xfstat(fd, "tmpfile");
    if (st.st_nlink != 0)
        checkfail("O_TMPFILE file has nlink %lu, want 0", (unsigned long)st.st_nlink);
    char proc[64], name[PATH_MAX];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    snprintf(name, sizeof name, "%s/linked-tmpfile", dir);
    if (linkat(AT_FDCWD, proc, AT_FDCWD, name, AT_SYMLINK_FOLLOW) < 0)
        sysfail("linkat(O_TMPFILE fd, %s)", name);
    close(fd);
    fd = open(name, O_RDONLY);
    if (fd < 0)
        sysfail("open %s", name);
    expect_content(fd, msg, sizeof msg - 1, 0, "linked tmpfile");
    close(fd);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int i = 1;
    if (i + 1 < argc && !strcmp(argv[i], "-e")) {
        g_expect = parse_errname(argv[i + 1]);
        if (g_expect <= 0) {
            fprintf(stderr, "vfsk-tool: unknown errno name %s\n", argv[i + 1]);
            return EXIT_USAGE;
        }
        i += 2;
    }
    if (i >= argc)
        usage();
    argc -= i;
    argv += i;
    g_cmd = argv[0];
    const char *c = argv[0];

    if (cmd_simple(argc, argv) == 0 || cmd_xattr(argc, argv) == 0)
        return 0;

    if (!strcmp(c, "flock-test")) {
        need(argc, 2);
        cmd_flock_test(argv[1]);
    } else if (!strcmp(c, "ofd-test")) {
        need(argc, 2);
        cmd_ofd_test(argv[1]);
    } else if (!strcmp(c, "owners-test")) {
        need(argc, 3);
        long n = strtol(argv[2], NULL, 10);
        if (n <= 0 || n > 1000000)
            usage();
        cmd_owners_test(argv[1], n);
    } else if (!strcmp(c, "posixlock-test")) {
        need(argc, 2);
        cmd_posixlock_test(argv[1]);
    } else if (!strcmp(c, "unlinked-test")) {
        need(argc, 2);
        cmd_unlinked_test(argv[1]);
    } else if (!strcmp(c, "statfs")) {
        need(argc, 2);
        cmd_statfs(argv[1]);
    } else if (!strcmp(c, "mkfiles")) {
        need(argc, 3);
        cmd_mkfiles(argv[1], strtol(argv[2], NULL, 10));
    } else if (!strcmp(c, "checkdir")) {
        need(argc, 3);
        long n = strtol(argv[2], NULL, 10);
        if (n <= 0 || n > 99999)
            usage();
        cmd_checkdir(argv[1], n);
    } else if (!strcmp(c, "truncate-test")) {
        need(argc, 2);
        cmd_truncate_test(argv[1]);
    } else if (!strcmp(c, "rw-test")) {
        need(argc, 2);
        cmd_rw_test(argv[1]);
    } else if (!strcmp(c, "fallocate-test")) {
        need(argc, 2);
        cmd_fallocate_test(argv[1]);
    } else if (!strcmp(c, "seek-test")) {
        need(argc, 2);
        cmd_seek_test(argv[1]);
    } else if (!strcmp(c, "copy-range-test")) {
        need(argc, 3);
        cmd_copy_range_test(argv[1], argv[2]);
    } else if (!strcmp(c, "tmpfile-test")) {
        need(argc, 2);
        cmd_tmpfile_test(argv[1]);
    } else {
        fprintf(stderr, "vfsk-tool: unknown subcommand %s\n", c);
        usage();
    }
    if (g_expect) {
        fprintf(stderr, "vfsk-tool: %s: succeeded, but %s was expected\n", c, errname(g_expect));
        return EXIT_FAIL;
    }
    return 0;
}
