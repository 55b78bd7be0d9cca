# shellcheck shell=bash
# Multicast: `reimage server` on the namespace's bridge streams the test
# image; two guests (direct kernel boot of the rescue system, DHCP from a
# dnsmasq on the bridge) restore it at once onto virtio disks. The second
# joins late, while the stream is running, and 10 % of the datagrams to
# it are dropped on its bridge port. The host checks both disks.
# shellcheck source=qemu-tests/lib.sh
. "$TOP/qemu-tests/lib.sh"

group=239.255.77.1
netns rq-mcast
tap mtap1
tap mtap2
dhcp_server

# Loss on the late guest's link only: a bridge-family rule on its port
# (the output hook: the server sends from the bridge device itself).
in_ns nft -f - <<NFT
table bridge loss {
  chain out {
    type filter hook output priority 0;
    oifname "mtap2" ip daddr $group meta l4proto udp numgen random mod 100 < 10 counter drop
  }
}
NFT

# A slow stream (3 MB/s: a pass of the test image takes a few seconds), so
# the second guest joins in the middle of the stream.
cat >"$WORK/server.plist" <<PLIST
<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict>
  <key>Data Rate</key><integer>3000000</integer>
  <key>Multicast Address</key><string>$group</string>
  <key>Multicast TTL</key><integer>1</integer>
  <key>DNS Service Discovery</key><false/>
</dict></plist>
PLIST
ip netns exec "$NS" "$BIN" server --source "$TESTOS_IMAGE" --config "$WORK/server.plist" --interface br0 >"$WORK/server.log" 2>&1 &
server=$!
on_exit "kill $server 2>/dev/null"
for _ in $(seq 50); do grep -q "Ready to start accepting clients" "$WORK/server.log" && break; sleep 0.2; done
grep -q "Ready to start accepting clients" "$WORK/server.log" || fail "the server did not start: $(cat "$WORK/server.log")"

cmdline="$GUEST_CMDLINE reimage.source=mcast://10.77.0.1 reimage.target=auto reimage.noprompt reimage.after=poweroff reimage.timeout=120"
start_guest() {
  blank_disk "$WORK/$1.img" 128
  guest_bg "$1" 400 -kernel "$MEDIA/vmlinuz" -initrd "$MEDIA/initrd.img" -append "$cmdline" \
    -netdev "tap,id=n0,ifname=$2,script=no,downscript=no" -device "virtio-net-pci,netdev=n0,mac=$3" \
    -drive "file=$WORK/$1.img,if=none,id=t,format=raw" -device virtio-blk-pci,drive=t
}

start_guest early mtap1 52:54:00:77:00:01
early=$guest_pid
wait_log early "reimage: restore " 240
grep -q "Starting stream" "$WORK/server.log" || fail "guest early restores, but the server never started the stream"
say "the stream runs: starting the late guest"
start_guest late mtap2 52:54:00:77:00:02
late=$guest_pid
wait_guest early "$early"
wait_guest late "$late"
for g in early late; do
  expect_log "$g" "Restored /dev/vda"
  expect_log "$g" "verified"
  check_restored "$WORK/$g.img"
done
dropped=$(in_ns nft list chain bridge loss out | grep -o 'packets [0-9]*' | awk '{print $2}')
say "datagrams dropped on the late guest's link: $dropped"
((dropped > 0)) || fail "no datagram was dropped: the loss rule did not apply"
grep -q "finished (" "$WORK/server.log" || fail "the server saw no client finish"
grep "finished (" "$WORK/server.log"
# The rescue system names each machine after its MAC, so the room's log
# tells them apart.
grep -q "Client reimage-770001 .*finished (" "$WORK/server.log" || fail "no finish line for reimage-770001"
grep -q "Client reimage-770002 .*finished (" "$WORK/server.log" || fail "no finish line for reimage-770002"
# Every pass sent data: while the guests verify (slowly, under TCG) after
# holding every chunk, the server must wait, not spin through empty passes.
starts=$(grep -c "Starting stream" "$WORK/server.log")
sent=$(grep -c " sent " "$WORK/server.log")
say "passes started: $starts, passes that sent data: $sent"
((starts <= sent + 1)) || fail "the server started $starts passes but only $sent sent anything"
