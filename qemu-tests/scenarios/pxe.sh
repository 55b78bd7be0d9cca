# shellcheck shell=bash
# PXE beside the site's own DHCP server: scripts/netboot-server in proxyDHCP
# mode (dnsmasq, reimage serve with the PXE tree under /boot/, and a
# multicast stream) on a bridge, and the site's DHCP server on another
# machine (a second namespace joined by a veth pair). A BIOS guest and then
# a UEFI one: iPXE (QEMU's NIC ROM) gets its address from the site server
# and boot.ipxe's URL from the proxy, fetches kernel and initramfs over
# HTTP, restores the test OS over HTTP onto the blank virtio disk and powers
# off; the host checks each disk, then stops the server with SIGTERM.
# shellcheck source=qemu-tests/lib.sh
. "$TOP/qemu-tests/lib.sh"

port=8088
netns rq-pxe
tap ptap0

# The site's DHCP server has its own address, as a real one would: its NIC
# (named br0, which dhcp_server serves) sits in rq-pxe-site at 10.77.0.2.
site=rq-pxe-site
namespace "$site"
ip -n "$NS" link add site0 type veth peer name br0 netns "$site"
ip -n "$NS" link set site0 master br0 up
ip -n "$site" addr add 10.77.0.2/24 dev br0
ip -n "$site" link set br0 up
NS=$site dhcp_server

REIMAGE=$BIN ip netns exec "$NS" "$TOP/scripts/netboot-server" --interface br0 \
  --images "$(dirname "$TESTOS_IMAGE")" --pxe "$MEDIA/pxe" --port "$port" --stream "$TESTOS_IMAGE" \
  --cmdline "$GUEST_CMDLINE reimage.source=http://10.77.0.1:$port/testos.rimg reimage.target=auto reimage.noprompt reimage.after=poweroff" \
  >"$WORK/netboot.log" 2>&1 &
server=$!
on_exit "kill $server 2>/dev/null; wait $server"
deadline=$((SECONDS + 60))
until grep -qs "^Serving " "$WORK/netboot.log" && grep -q "TFTP root is" "$WORK/netboot.log" &&
  grep -q "Ready to start accepting clients" "$WORK/netboot.log"; do
  ((SECONDS < deadline)) || { cat "$WORK/netboot.log"; fail "netboot-server did not come up"; }
  kill -0 "$server" 2>/dev/null || { cat "$WORK/netboot.log"; fail "netboot-server ended"; }
  sleep 0.5
done
say "netboot-server is up"

# Guests are iPXE already; machines with a plain PXE ROM get iPXE over TFTP.
in_ns busybox tftp -g -r undionly.kpxe -l "$WORK/undionly.kpxe" 10.77.0.1
cmp "$WORK/undionly.kpxe" "$MEDIA/pxe/undionly.kpxe" || fail "TFTP served a wrong undionly.kpxe"

for fw in bios uefi; do
  name=pxe-$fw
  mac=52:54:00:77:00:10
  firmware=()
  if [[ $fw == uefi ]]; then
    mac=52:54:00:77:00:11
    read -ra firmware <<<"$(uefi "$name")"
  fi
  blank_disk "$WORK/$name.img" 128
  guest "$name" 240 "${firmware[@]}" \
    -netdev tap,id=n0,ifname=ptap0,script=no,downscript=no -device "virtio-net-pci,netdev=n0,mac=$mac,bootindex=1" \
    -drive "file=$WORK/$name.img,if=none,id=t,format=raw" -device virtio-blk-pci,drive=t
  expect_log "$name" "http://10.77.0.1:$port/testos.rimg"
  expect_log "$name" "reimage.target=auto chose vda"
  expect_log "$name" "Restored /dev/vda"
  expect_log "$name" "reboot: Power down"
  check_restored "$WORK/$name.img"

  # The route it took: the proxy answered its PXE request but gave it no
  # address; the address came from the site server's range. (The restore
  # from the URL above proves boot.ipxe came over HTTP: only it holds it.)
  grep -m1 -F "PXE(br0) $mac proxy" "$WORK/netboot.log" || fail "the proxy never answered $name"
  grep -m1 -E "DHCPACK\(br0\) 10\.77\.0\.1[0-9]{2} $mac" "$WORK/dnsmasq.log" ||
    fail "$name got no address from the site's DHCP server"
  if grep -F "$mac" "$WORK/netboot.log" | grep -E "DHCP(OFFER|ACK)"; then
    fail "the proxy handed $name an address"
  fi
done
grep -m1 -F "bootfile name: http://10.77.0.1:$port/boot/boot.ipxe" "$WORK/netboot.log" ||
  fail "the proxy never sent boot.ipxe's URL"

# SIGTERM stops everything netboot-server started, and it says so.
kill -TERM "$server"
status=0
wait "$server" || status=$?
((status == 0)) || { tail -20 "$WORK/netboot.log"; fail "netboot-server exited with $status on SIGTERM"; }
run=$(awk '$1 == "files" {print $2}' "$WORK/netboot.log")
[[ -n $run && ! -e $run ]] || fail "netboot-server left its files in ${run:-(none printed)}"
grep -q "exiting on receipt of SIGTERM" "$WORK/netboot.log" || fail "dnsmasq was not stopped"
grep -q "^Stopped" "$WORK/netboot.log" || fail "reimage server was not stopped"
[[ -z $(in_ns ss -Hltn "sport = :$port") ]] || fail "something still listens on port $port"
say "netboot-server stopped cleanly"
