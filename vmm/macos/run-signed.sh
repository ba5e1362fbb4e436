#!/bin/sh
# Cargo runner for aarch64-apple-darwin (see .cargo/config.toml): ad-hoc signs the binary cargo
# built with vmm/macos/entitlements.plist, then executes it with the remaining arguments.
#
#   run-signed.sh <binary> [args...]
#
# Hypervisor.framework refuses to create a VM for a process without the
# com.apple.security.hypervisor entitlement, and an entitlement only exists in a code signature;
# cargo rebuilds (and so unsigns) the binary whenever the sources change, hence signing on every
# run. The ad-hoc identity "-" needs no developer account.
set -eu

if [ "$#" -lt 1 ]; then
	echo "usage: $0 <binary> [args...]" >&2
	exit 2
fi

here=$(cd "$(dirname "$0")" && pwd)
entitlements="$here/entitlements.plist"
bin=$1
shift

# The vmm links the in-kernel GIC API (hv_gic_*), which exists from macOS 15: on older systems
# the dynamic loader stops the program before main with "Symbol not found: _hv_gic_...".
version=$(sw_vers -productVersion 2>/dev/null || echo unknown)
major=${version%%.*}
case "$major" in
'' | *[!0-9]*) ;;
*)
	if [ "$major" -lt 15 ]; then
		echo "run-signed.sh: warning: macOS $version: the vmm needs macOS 15 or later for" \
			"Hypervisor.framework's in-kernel GIC (hv_gic_*); it will not start here." >&2
	fi
	;;
esac

if ! out=$(codesign --sign - --force --entitlements "$entitlements" "$bin" 2>&1); then
	echo "run-signed.sh: could not sign $bin with $entitlements:" >&2
	echo "$out" >&2
	exit 1
fi

exec "$bin" "$@"
