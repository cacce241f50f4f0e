#!/usr/bin/env bash
# The Debian packages the test suite needs, installed when this runs as root with apt-get;
# otherwise one message naming what is missing and the command that installs it, and exit 1.
#   dataset-fashion-mnist          the built-in fashion-mnist data set (IDX files)
#   gcc-arm-none-eabi, libnewlib-arm-none-eabi, libstdc++-arm-none-eabi-newlib
#                                  TFLite Micro firmware for Cortex-M, and the generated sources compiled for it
#   qemu-system-arm                runs that firmware on emulated Cortex-M machines
#   gcc                            builds the QEMU plugin that counts the firmware's flash reads
#   g++, make                      the generated sources compiled for the host
#   chromium                       the HTML report rendered in a real headless browser
#   openssh-server, openssh-client remote profiling tested against a real sshd on 127.0.0.1
set -u
PACKAGES="dataset-fashion-mnist gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm gcc g++ make chromium openssh-server openssh-client"

missing=""
for p in $PACKAGES; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
missing="${missing# }"
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing the system packages the tests need: $missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null && exit 0
  echo "apt-get could not install: $missing" >&2
  exit 1
fi
echo "The test suite needs these system packages, which are not installed: $missing" >&2
echo "Install them with: sudo apt-get install $missing" >&2
exit 1
