#!/bin/sh
# POSIX workload for the virtiofs-keeper E2E suite. Runs in the guest (busybox sh +
# /bin/vfsk-tool) with cwd on the virtio-fs mount (/mnt).
#
# Every check prints "ok <name>" or "not ok <name>: <reason>". The exit status is the
# number of failures (capped at 255).
#
# Environment:
#   VFSK_BACKEND   "ours" makes every check mandatory. For other backends (the C
#                  virtiofsd), the checks listed in OPTIONAL_FOR_PEER may report
#                  "ok <name> # unsupported by backend: ..." when the backend answers
#                  ENOSYS/EOPNOTSUPP (vfsk-tool exit 3).
#   VFSK_ROOT      where to work (default /mnt)
#   VFSK_MANY      entries in the big directory (default 5000)
#   VFSK_BIG_MIB   size of the big file in MiB (default 64)
#
# It leaves this tree under $VFSK_ROOT/final for the host to check:
#   hello.txt          "hello world\nline2\n"
#   MANIFEST.sha256    sha256sum lines for hello.txt big.bin truncated.bin swap-a swap-b
#                      renamed.txt copied.bin hard1
#   big.bin            VFSK_BIG_MIB MiB of random data
#   truncated.bin      "0123" + 4 NUL bytes
#   renamed.txt        "renamed\n" (was tobe-renamed.txt, which must be gone)
#   replaced.txt       "new content\n" (renamed over an existing file; replacer.txt gone)
#   swap-a, swap-b     "B\n", "A\n" (swapped with RENAME_EXCHANGE)
#   hard1, hard2       hard links, nlink 2, "linked\n" + "via hard2\n"
#   link               symlink -> hello.txt
#   mode640            mode 0640
#   owned              uid 1234, gid 5678
#   times              atime 1111111111.111111111, mtime 1234567890.987654321
#   xattr.txt          user.vfsk.color=blue, user.vfsk.empty="", no user.vfsk.removed
#   fifo               a FIFO
#   copied.bin         copy_file_range copy of a 1 MiB pattern file
#   many/              f00000 .. f04999 (VFSK_MANY entries), empty files
#   emptydir/          an empty directory
#   DONE               "done\n", written last
# and removes $VFSK_ROOT/scratch entirely.

ROOT=${VFSK_ROOT:-/mnt}
BACKEND=${VFSK_BACKEND:-unknown}
MANY=${VFSK_MANY:-5000}
BIG_MIB=${VFSK_BIG_MIB:-64}
F=$ROOT/final
S=$ROOT/scratch
T=/bin/vfsk-tool

# Checks that may be unsupported by the C virtiofsd (and only there).
OPTIONAL_FOR_PEER=" o-tmpfile "

passes=0
fails=0

ok() { echo "ok $1"; passes=$((passes + 1)); }
notok() { echo "not ok $1: $2"; fails=$((fails + 1)); }
oneline() { tr '\n' ' ' | sed 's/  */ /g; s/ $//' | cut -c1-600; }

# uptime in centiseconds
uptime_cs() { read -r _u _ < /proc/uptime; echo $((${_u%.*} * 100 + 1${_u#*.} - 100)); }

# check NAME CMD...: CMD's exit status decides; its output is the reason on failure.
# A "# time NAME SECONDS" line precedes each result.
check() {
  _name=$1
  shift
  _t0=$(uptime_cs)
  _out=$("$@" 2>&1)
  _rc=$?
  _t1=$(uptime_cs)
  echo "# time $_name $(((_t1 - _t0) / 100)).$(printf '%02d' $(((_t1 - _t0) % 100)))s"
  if [ $_rc -eq 0 ]; then
    ok "$_name"
  elif [ $_rc -eq 3 ] && [ "$BACKEND" != ours ] && case "$OPTIONAL_FOR_PEER" in *" $_name "*) true ;; *) false ;; esac; then
    echo "ok $_name # unsupported by backend $BACKEND: $(echo "$_out" | oneline)"
    passes=$((passes + 1))
  else
    notok "$_name" "exit $_rc: $(echo "$_out" | oneline)"
  fi
}

# expect_eq WHAT GOT WANT
expect_eq() {
  if [ "$2" != "$3" ]; then
    echo "$1: got '$2', want '$3'"
    return 1
  fi
}

fstat() { stat -c "$1" "$2"; }

rm -rf "$F" "$S"
mkdir -p "$F" "$S" || { echo "not ok setup: cannot create $F and $S"; exit 1; }
echo "# posix.sh: backend=$BACKEND root=$ROOT kernel=$(uname -r)"

# ---------------------------------------------------------------- basics
t_mount() { grep " $ROOT virtiofs " /proc/mounts || { cat /proc/mounts; return 1; }; }
check mount-is-virtiofs t_mount

t_create() {
  printf 'hello world\n' > "$F/hello.txt" || return 1
  expect_eq content "$(cat "$F/hello.txt")" "hello world" &&
    expect_eq size "$(fstat %s "$F/hello.txt")" 12 &&
    expect_eq type "$(fstat %F "$F/hello.txt")" "regular file"
}
check create-write-read t_create

t_append() {
  printf 'line2\n' >> "$F/hello.txt" || return 1
  expect_eq content "$(cat "$F/hello.txt")" "hello world
line2" && expect_eq size "$(fstat %s "$F/hello.txt")" 18
}
check append t_append

check pwrite-pread-append $T rw-test "$S/rw.bin"
check truncate-ops $T truncate-test "$S/trunc.bin"

t_truncate_shell() {
  printf '0123456789' > "$F/truncated.bin" &&
    truncate -s 4 "$F/truncated.bin" &&
    expect_eq shrunk "$(cat "$F/truncated.bin")" 0123 &&
    truncate -s 8 "$F/truncated.bin" &&
    expect_eq size "$(fstat %s "$F/truncated.bin")" 8 &&
    expect_eq grown "$(od -An -c "$F/truncated.bin" | tr -s ' ')" " 0 1 2 3 \\0 \\0 \\0 \\0"
}
check truncate-shrink-grow t_truncate_shell

check fsync $T fsync "$F/hello.txt"

# ---------------------------------------------------------------- renames and links
t_rename() {
  printf 'renamed\n' > "$F/tobe-renamed.txt" &&
    $T rename "$F/tobe-renamed.txt" "$F/renamed.txt" &&
    $T -e ENOENT stat "$F/tobe-renamed.txt" &&
    expect_eq content "$(cat "$F/renamed.txt")" renamed
}
check rename t_rename

t_rename_over() {
  printf 'old content\n' > "$F/replaced.txt" &&
    printf 'new content\n' > "$F/replacer.txt" &&
    ino=$(fstat %i "$F/replacer.txt") &&
    $T rename "$F/replacer.txt" "$F/replaced.txt" &&
    $T -e ENOENT stat "$F/replacer.txt" &&
    expect_eq content "$(cat "$F/replaced.txt")" "new content" &&
    expect_eq inode "$(fstat %i "$F/replaced.txt")" "$ino"
}
check rename-over-existing t_rename_over

t_rename_dir() {
  mkdir -p "$S/rdir/sub" && echo x > "$S/rdir/sub/file" && mkdir "$S/rdir2" || return 1
  $T -e ENOTEMPTY rename "$S/rdir2" "$S/rdir" || return 1
  $T rename "$S/rdir" "$S/rdir3" && expect_eq moved "$(cat "$S/rdir3/sub/file")" x || return 1
  $T -e ENOTDIR rename "$S/rdir2" "$S/rdir3/sub/file" || return 1
  $T -e EISDIR rename "$S/rdir3/sub/file" "$S/rdir2" || return 1
  # over an empty directory works
  $T rename "$S/rdir3" "$S/rdir2" && expect_eq moved-over-empty "$(cat "$S/rdir2/sub/file")" x &&
    $T -e ENOENT stat "$S/rdir3"
}
check rename-directories t_rename_dir

t_noreplace() {
  printf 'A\n' > "$S/nr-a" && printf 'B\n' > "$S/nr-b" &&
    $T -e EEXIST rename2 "$S/nr-a" "$S/nr-b" noreplace &&
    expect_eq a-intact "$(cat "$S/nr-a")" A && expect_eq b-intact "$(cat "$S/nr-b")" B &&
    $T rename2 "$S/nr-a" "$S/nr-c" noreplace &&
    $T -e ENOENT stat "$S/nr-a" && expect_eq moved "$(cat "$S/nr-c")" A
}
check renameat2-noreplace t_noreplace

t_exchange() {
  printf 'A\n' > "$F/swap-a" && printf 'B\n' > "$F/swap-b" &&
    $T rename2 "$F/swap-a" "$F/swap-b" exchange &&
    expect_eq swap-a "$(cat "$F/swap-a")" B && expect_eq swap-b "$(cat "$F/swap-b")" A &&
    $T -e ENOENT rename2 "$F/swap-a" "$S/does-not-exist" exchange
}
check renameat2-exchange t_exchange

t_hardlink() {
  printf 'linked\n' > "$F/hard1" && ln "$F/hard1" "$F/hard2" &&
    expect_eq nlink1 "$(fstat %h "$F/hard1")" 2 && expect_eq nlink2 "$(fstat %h "$F/hard2")" 2 &&
    expect_eq inode "$(fstat %i "$F/hard2")" "$(fstat %i "$F/hard1")" &&
    printf 'via hard2\n' >> "$F/hard2" &&
    expect_eq shared "$(cat "$F/hard1")" "linked
via hard2" &&
    ln "$F/hard1" "$S/hard3" && expect_eq nlink3 "$(fstat %h "$F/hard1")" 3 &&
    rm "$S/hard3" && expect_eq nlink-after-unlink "$(fstat %h "$F/hard1")" 2
}
check hardlink t_hardlink

t_symlink() {
  ln -s hello.txt "$F/link" &&
    expect_eq readlink "$($T readlink "$F/link")" hello.txt &&
    expect_eq type "$(stat -c %F "$F/link")" "symbolic link" &&
    expect_eq follow "$(head -n1 "$F/link")" "hello world" &&
    ln -s does-not-exist "$S/dangling" && $T -e ENOENT stat "$S/dangling" &&
    $T lstat "$S/dangling" >/dev/null
}
check symlink-readlink t_symlink

# ---------------------------------------------------------------- attributes
t_chmod() {
  printf 'mode\n' > "$F/mode640" && chmod 640 "$F/mode640" &&
    expect_eq mode "$(fstat %a "$F/mode640")" 640 &&
    chmod 4755 "$S/rw.bin" && expect_eq setuid "$(fstat %a "$S/rw.bin")" 4755 &&
    mkdir "$S/sticky" && chmod 1777 "$S/sticky" && expect_eq sticky "$(fstat %a "$S/sticky")" 1777
}
check chmod t_chmod

t_chown() {
  printf 'owned\n' > "$F/owned" && chown 1234:5678 "$F/owned" &&
    expect_eq owner "$(fstat %u:%g "$F/owned")" 1234:5678 &&
    ln -s owned "$S/owned-link" && chown -h 4321:8765 "$S/owned-link" &&
    expect_eq symlink-owner "$(stat -c %u:%g "$S/owned-link")" 4321:8765 &&
    expect_eq target-owner "$(fstat %u:%g "$F/owned")" 1234:5678
}
check chown t_chown

t_times() {
  printf 'times\n' > "$F/times" &&
    $T utimens "$F/times" 1111111111 111111111 1234567890 987654321 &&
    expect_eq mtime "$(fstat %Y "$F/times")" 1234567890 &&
    touch -d '2001-02-03 04:05:06' "$S/touched" &&
    expect_eq touch-mtime "$(date -u -r "$S/touched" +%Y%m%d%H%M%S 2>/dev/null || fstat %Y "$S/touched")" \
      "$(date -u -d '2001-02-03 04:05:06' +%Y%m%d%H%M%S 2>/dev/null || echo 981173106)"
}
check utimensat t_times

# ---------------------------------------------------------------- directories and errors
t_mkdir_rmdir() {
  mkdir "$S/d1" && mkdir "$S/d1/sub" && echo x > "$S/d1/sub/f" &&
    $T -e ENOTEMPTY rmdir "$S/d1" &&
    $T -e ENOTEMPTY rmdir "$S/d1/sub" &&
    rm "$S/d1/sub/f" && rmdir "$S/d1/sub" && rmdir "$S/d1" &&
    $T -e ENOENT stat "$S/d1" &&
    mkdir "$F/emptydir" && expect_eq nlink "$(fstat %h "$F/emptydir")" 2
}
check mkdir-rmdir t_mkdir_rmdir

t_errors() {
  $T -e ENOENT stat "$S/missing" || return 1
  $T -e ENOENT open "$S/missing" || return 1
  $T -e ENOENT unlink "$S/missing" || return 1
  $T -e ENOENT rmdir "$S/missing" || return 1
  $T -e ENOENT open "$S/missing-dir/x" || return 1
  $T -e ENOENT rename "$S/missing" "$S/other" || return 1
  $T -e EEXIST mkdir "$F" || return 1
  $T -e EEXIST mkdir "$F/hello.txt" || return 1
  $T -e EEXIST create "$F/hello.txt" || return 1
  $T -e EEXIST link "$F/hello.txt" "$F/renamed.txt" || return 1
  $T -e EEXIST symlink x "$F/hello.txt" || return 1
  $T -e ENOTDIR stat "$F/hello.txt/x" || return 1
  $T -e ENOTDIR rmdir "$F/hello.txt" || return 1
  $T -e EISDIR unlink "$F" || return 1
  $T -e EINVAL rename "$S" "$S/inside" || return 1
  $T -e ENAMETOOLONG create "$S/$(printf '%0300d' 0)" || return 1
}
check error-cases t_errors

t_many() {
  mkdir "$F/many" &&
    $T mkfiles "$F/many" "$MANY" &&
    $T checkdir "$F/many" "$MANY"
}
check readdir-many t_many

# ---------------------------------------------------------------- xattrs
check xattr-ops $T xattr-test "$S/xattr-ops"
t_xattr_final() {
  printf 'xattrs\n' > "$F/xattr.txt" &&
    $T setxattr "$F/xattr.txt" user.vfsk.color blue create &&
    $T setxattr "$F/xattr.txt" user.vfsk.empty "" &&
    $T setxattr "$F/xattr.txt" user.vfsk.removed tmp &&
    $T removexattr "$F/xattr.txt" user.vfsk.removed &&
    expect_eq color "$($T getxattr "$F/xattr.txt" user.vfsk.color)" blue &&
    expect_eq list "$($T listxattr "$F/xattr.txt" | grep '^user\.vfsk\.' | sort | tr '\n' ' ')" \
      "user.vfsk.color user.vfsk.empty " &&
    $T -e ENODATA getxattr "$F/xattr.txt" user.vfsk.removed
}
check xattr-set-get-list-remove t_xattr_final

# ---------------------------------------------------------------- locks
check flock-conflict $T flock-test "$S/flock"
check ofd-lock-conflict $T ofd-test "$S/ofd"
check posix-lock-conflict $T posixlock-test "$S/posixlock"
check posix-lock-owners $T owners-test "$S/owners" 1000

# ---------------------------------------------------------------- big file
t_big() {
  dd if=/dev/urandom of="$F/big.bin" bs=1048576 count="$BIG_MIB" 2>/dev/null || return 1
  expect_eq size "$(fstat %s "$F/big.bin")" $((BIG_MIB * 1048576)) || return 1
  a=$(sha256sum < "$F/big.bin" | cut -d' ' -f1)
  sync
  echo 3 > /proc/sys/vm/drop_caches
  # read it back after dropping caches, in odd-sized pieces
  b=$(dd if="$F/big.bin" bs=65519 2>/dev/null | sha256sum | cut -d' ' -f1)
  expect_eq sha256-after-drop-caches "$b" "$a"
}
check big-file-sha256 t_big

# ---------------------------------------------------------------- misc
check open-unlink-read $T unlinked-test "$S/unlinked"
t_statfs() { $T statfs "$ROOT" && df "$ROOT" >/dev/null; }
check statfs t_statfs
check mknod-fifo $T mkfifo "$F/fifo"

# mknod, then open(O_CREAT) of the same name (ash's <> is O_RDWR|O_CREAT, >> is
# O_WRONLY|O_CREAT|O_APPEND). The guest kernel finds the name with LOOKUP and opens its own
# device or pipe; the backend must never open the host's node (a hostile guest's CREATE of an
# existing node gets EBADF, see test/frontend/hostile_fs.test.ts) and keeps serving.
t_nodes_creat() {
  mknod "$S/zero" c 1 5 && mknod "$S/full" c 1 7 && mkfifo "$S/fifo2" || return 1
  exec 3<>"$S/zero" || return 1
  _z=$(dd bs=4 count=1 <&3 2>/dev/null | od -An -tx1 | tr -d ' \n')
  exec 3<&-
  expect_eq zero "$_z" 00000000 || return 1
  if (printf x >> "$S/full") 2>/dev/null; then echo "write to the full node succeeded"; return 1; fi
  exec 4<>"$S/fifo2" || return 1
  echo ping >&4
  read -r _p <&4
  exec 4<&-
  expect_eq fifo "$_p" ping || return 1
  $T -e EEXIST create "$S/zero" || return 1
  rm "$S/zero" "$S/full" "$S/fifo2" && [ ! -e "$S/zero" ]
}
check mknod-then-creat t_nodes_creat
check fallocate $T fallocate-test "$S/falloc"
check seek-data-hole $T seek-test "$S/sparse"
check copy-file-range $T copy-range-test "$S/copy-src" "$F/copied.bin"

# O_TMPFILE needs the guest kernel's FUSE to implement ->tmpfile (FUSE_TMPFILE); without
# it the kernel answers EOPNOTSUPP before any request reaches the backend.
if grep -q ' fuse_tmpfile' /proc/kallsyms 2>/dev/null; then
  check o-tmpfile $T tmpfile-test "$S"
else
  _out=$($T tmpfile-test "$S" 2>&1)
  case $? in
    0) ok o-tmpfile ;;
    3) echo "ok o-tmpfile # unsupported by guest kernel $(uname -r) (no FUSE tmpfile): $(echo "$_out" | oneline)"
       passes=$((passes + 1)) ;;
    *) notok o-tmpfile "$(echo "$_out" | oneline)" ;;
  esac
fi

# ---------------------------------------------------------------- final tree
t_manifest() {
  (cd "$F" && sha256sum hello.txt big.bin truncated.bin swap-a swap-b renamed.txt copied.bin hard1 > MANIFEST.sha256) &&
    (cd "$F" && sha256sum -c MANIFEST.sha256 >/dev/null)
}
check manifest t_manifest

t_cleanup() {
  rm -rf "$S" && $T -e ENOENT stat "$S" &&
    expect_eq root-entries "$(ls -a "$ROOT" | grep -v '^\.\.*$' | tr '\n' ' ')" "final "
}
check remove-tree t_cleanup

printf 'done\n' > "$F/DONE" && sync

echo "# posix.sh: $passes passed, $fails failed"
[ $fails -gt 255 ] && fails=255
exit $fails
