# shellcheck shell=bash
# Shared by the qemu-tests scenarios (sourced). The runner exports:
#   TOP     the repository            BIN    the static reimage
#   WORK    this scenario's scratch directory (empty at the start)
#   MEDIA   image-build's output: vmlinuz, initrd.img, reimage-usb.img, pxe/
#           (the stick restores stick:testos.rimg onto auto and powers off)
#   TESTOS  the bootable test disk (raw)  TESTOS_IMAGE  its prepared image
# Facts behind the QEMU options: ../shared/BOOT-NOTES.md.

set -euo pipefail

OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
# Every guest's kernel command line starts with these (no_timer_check: a
# TCG guest on a loaded host can fail the IO-APIC timer check and panic).
export GUEST_CMDLINE="console=tty0 console=ttyS0,115200n8 no_timer_check panic=-1 loglevel=4"

cleanups=()
# Guests run inside the scenario's network namespace once `netns` made one.
GUEST_PREFIX=()
# Runs "$@" when the scenario ends, last registered first.
on_exit() { cleanups=("$*" "${cleanups[@]}"); }
run_cleanups() {
  local c
  for c in "${cleanups[@]}"; do eval "$c" || true; done
}
trap run_cleanups EXIT

say() { printf '%s %s\n' "$(date +%T)" "$*"; }
fail() { say "FAIL: $*"; exit 1; }

# qemu ARGS...: the common options; callers add disks, NICs, firmware.
# QEMU_ACCEL=kvm where KVM guests work (not on these machines: they hang).
qemu_cmd() {
  echo qemu-system-x86_64 -accel "${QEMU_ACCEL:-tcg}" -m 1024 -smp 1 \
    -nodefaults -display none -vga none -monitor none -no-reboot
}

# uefi NAME: pflash options with a fresh copy of the variable store.
uefi() {
  cp "$OVMF_VARS" "$WORK/$1.vars"
  echo -machine q35 \
    -drive "if=pflash,format=raw,readonly=on,file=$OVMF_CODE" \
    -drive "if=pflash,format=raw,file=$WORK/$1.vars"
}

# The guest's serial port: logged to $WORK/NAME.log, and when SERIAL_SOCKET
# is set also a unix socket there for typing into it (qemu-tests/serial-menu).
serial() {
  if [ -n "${SERIAL_SOCKET:-}" ]; then
    echo -chardev "socket,id=ser0,path=$SERIAL_SOCKET,server=on,wait=off,logfile=$WORK/$1.log" -serial chardev:ser0
  else
    echo -serial "file:$WORK/$1.log"
  fi
}

# guest_bg NAME SECONDS QEMU-ARGS...: the same in the background; the PID
# is in $guest_pid. `wait_guest NAME PID` collects it.
guest_bg() {
  local name=$1 secs=$2
  shift 2
  say "guest $name: starting"
  # shellcheck disable=SC2046
  timeout -k 5 "$secs" "${GUEST_PREFIX[@]}" $(qemu_cmd) $(serial "$name") "$@" </dev/null >"$WORK/$name.qemu" 2>&1 &
  guest_pid=$!
  on_exit "kill $guest_pid 2>/dev/null"
}
wait_guest() {
  if ! wait "$2"; then
    tail -5 "$WORK/$1.qemu" >&2 || true
    tail -30 "$WORK/$1.log" >&2 || true
    fail "guest $1 did not end by itself in time"
  fi
  say "guest $1: ended"
}

# guest NAME SECONDS QEMU-ARGS...: runs a guest to its end with the serial
# console in $WORK/NAME.log; fails when it outlives SECONDS.
guest() {
  guest_bg "$@"
  wait_guest "$1" "$guest_pid"
}

# expect_log NAME TEXT: the guest's serial log holds TEXT.
expect_log() {
  grep -aqF -- "$2" "$WORK/$1.log" || {
    tail -30 "$WORK/$1.log" >&2
    fail "guest $1 never printed: $2"
  }
  say "guest $1 printed: $2"
}

# wait_log NAME TEXT SECONDS: waits until the serial log holds TEXT.
wait_log() {
  local deadline=$((SECONDS + $3))
  until grep -aqF -- "$2" "$WORK/$1.log" 2>/dev/null; do
    ((SECONDS < deadline)) || { tail -30 "$WORK/$1.log" >&2 || true; fail "guest $1: no \"$2\" within $3 s"; }
    sleep 0.5
  done
}

# blank_disk PATH MIB: a sparse raw disk.
blank_disk() {
  rm -f "$1"
  truncate -s "$2M" "$1"
}

# check_restored TARGET: the host's own check that TARGET holds the test OS.
check_restored() {
  "$TOP/qemu-tests/check-disk" "$TESTOS" "$1" || fail "the restored disk $1 is wrong"
}

# boot_restored NAME DISK: boots DISK (UEFI, NVMe) and expects the test OS.
boot_restored() {
  # shellcheck disable=SC2046
  guest "$1" 120 $(uefi "$1") \
    -drive "file=$2,if=none,id=restored,format=raw,snapshot=on" -device nvme,serial=restored,drive=restored
  expect_log "$1" "reimage-test-os: up (testos=restored-ok)"
}

# namespace NAME: an empty network namespace with lo up. When the scenario
# ends, whatever still runs in it (all started by this scenario) is
# stopped and the namespace removed.
namespace() {
  ip netns add "$1"
  on_exit "ip netns pids $1 | xargs -r kill; sleep 0.5; ip netns pids $1 | xargs -r kill -9; ip netns del $1"
  ip -n "$1" link set lo up
}

# isolated NAME: guests started from now on run in an empty namespace of
# their own (they have no NIC; nothing they do can reach the host's).
isolated() {
  namespace "$1"
  GUEST_PREFIX=(ip netns exec "$1")
}

# netns NAME: a network namespace with a bridge br0 at 10.77.0.1/24
# (multicast snooping off: every port hears every group), lo up, where the
# guests started from now on run. Removed when the scenario ends.
netns() {
  NS=$1
  GUEST_PREFIX=(ip netns exec "$NS")
  namespace "$NS"
  ip -n "$NS" link add br0 type bridge mcast_snooping 0
  ip -n "$NS" addr add 10.77.0.1/24 dev br0
  ip -n "$NS" link set br0 up
}

# tap NAME: a tap device on $NS's bridge, for a guest's -netdev tap.
tap() {
  ip -n "$NS" tuntap add "$1" mode tap
  ip -n "$NS" link set "$1" master br0 up
}

# in_ns CMD...: runs CMD in $NS. To run one in the background, use
# `ip netns exec "$NS" CMD &` instead: then $! is CMD itself, not a
# subshell whose end would leave CMD running.
in_ns() { ip netns exec "$NS" "$@"; }

# dhcp_server: dnsmasq handing out 10.77.0.100-199 on br0 (no DNS, no
# boot files): the site's own DHCP server.
dhcp_server() {
  ip netns exec "$NS" dnsmasq --keep-in-foreground --port=0 --interface=br0 --bind-interfaces \
    --dhcp-range=10.77.0.100,10.77.0.199,1h --dhcp-leasefile="$WORK/leases" \
    --pid-file="$WORK/dnsmasq.pid" --log-facility="$WORK/dnsmasq.log" --log-dhcp &
  on_exit "kill $! 2>/dev/null"
}
