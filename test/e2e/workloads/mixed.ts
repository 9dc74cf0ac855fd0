// The mixed POSIX workload the crash tests run in the guest (busybox sh, cwd /mnt): rounds of
// mkdir, write, append, rename, hard and symbolic links, chmod, unlink, truncate, each checked in
// the guest, until 40 rounds are done and /mnt/stop exists. It leaves /mnt/manifest
// ("<sha256> <path>" per round) and /mnt/w/append.log ("line N" per round) for the host to check.
export const MIXED_WORKLOAD = `
set -u
mkdir -p /mnt/w
: > /tmp/manifest
i=1
while [ $i -le 40 ] || [ ! -e /mnt/stop ]; do
  d=/mnt/w/d$((i % 7))
  mkdir -p $d || { echo "ERR mkdir $i"; exit 1; }
  dd if=/dev/urandom of=/tmp/blk bs=4k count=$((1 + i % 24)) 2>/dev/null
  cp /tmp/blk $d/f$i.tmp || { echo "ERR write $i"; exit 1; }
  echo "line $i" >> /mnt/w/append.log || { echo "ERR append $i"; exit 1; }
  mv $d/f$i.tmp $d/f$i || { echo "ERR rename $i"; exit 1; }
  ln $d/f$i /mnt/w/hard$i || { echo "ERR link $i"; exit 1; }
  ln -s d$((i % 7))/f$i /mnt/w/sym$i || { echo "ERR symlink $i"; exit 1; }
  chmod 640 $d/f$i || { echo "ERR chmod $i"; exit 1; }
  [ "$(readlink /mnt/w/sym$i)" = "d$((i % 7))/f$i" ] || { echo "ERR readlink $i"; exit 1; }
  if [ $((i % 3)) = 0 ]; then rm /mnt/w/hard$i || { echo "ERR unlink $i"; exit 1; }; fi
  if [ $((i % 5)) = 0 ]; then mkdir /mnt/w/tmp$i && rmdir /mnt/w/tmp$i || { echo "ERR mkdir/rmdir $i"; exit 1; }; fi
  truncate -s $((4096 * (1 + i % 24) + 100)) $d/f$i || { echo "ERR truncate $i"; exit 1; }
  dd if=/tmp/blk of=/tmp/exp bs=4k 2>/dev/null; truncate -s $((4096 * (1 + i % 24) + 100)) /tmp/exp
  [ "$(sha256sum < $d/f$i)" = "$(sha256sum < /tmp/exp)" ] || { echo "ERR checksum $i"; exit 1; }
  echo "$(sha256sum < /tmp/exp | cut -d' ' -f1) w/d$((i % 7))/f$i" >> /tmp/manifest
  echo "round $i ok"
  i=$((i + 1))
done
n=$(ls /mnt/w | wc -l)
cp /tmp/manifest /mnt/manifest || { echo "ERR manifest"; exit 1; }
echo "workload done after $((i - 1)) rounds, $n entries"
`;
