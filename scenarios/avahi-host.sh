#!/bin/sh
# Starts Avahi inside the current network namespace (a warren-netsim host): a private D-Bus
# system bus in DIR (so nothing touches the machine's own bus) and avahi-daemon on sim0 only,
# IPv4 only. Prints the export line for the bus address; stop with `kill $(cat DIR/*.pid)`.
#
#   scenarios/avahi-host.sh DIR
set -e
dir="$1"
[ -n "$dir" ] || { echo "usage: $0 DIR" >&2; exit 2; }
mkdir -p "$dir"
cat > "$dir/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$dir/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
EOF
cat > "$dir/avahi.conf" <<EOF
[server]
use-ipv4=yes
use-ipv6=no
allow-interfaces=sim0
enable-dbus=yes
[wide-area]
enable-wide-area=no
[publish]
publish-hinfo=no
publish-workstation=no
EOF
dbus-daemon --config-file="$dir/bus.conf" --fork --print-pid > "$dir/dbus.pid"
export DBUS_SYSTEM_BUS_ADDRESS="unix:path=$dir/bus"
avahi-daemon --no-chroot --no-drop-root --no-rlimits --no-proc-title -f "$dir/avahi.conf" > "$dir/avahi.log" 2>&1 &
echo $! > "$dir/avahi.pid"
# Wait (at most 5 s) until the daemon answers on the bus.
i=0
until DBUS_SYSTEM_BUS_ADDRESS="unix:path=$dir/bus" avahi-browse -at >/dev/null 2>&1; do
  i=$((i + 1))
  [ "$i" -lt 50 ] || { echo "avahi-daemon did not start:" >&2; cat "$dir/avahi.log" >&2; exit 1; }
  sleep 0.1
done
