# shellcheck shell=bash
# vflow (e2e/kind/node-image/entrypoint-fixups.sh), spliced in before kind's own checks.
# The node runs without --privileged here (see e2e/kind/docker-front.sh), so docker
# mounts the cgroup hierarchies read-only: remount them read-write, as --privileged
# would have them.
vflow_cgroups_rw() {
  local mnt
  if findmnt -rn -o OPTIONS /sys/fs/cgroup | grep -q '^ro'; then
    mount -o remount,rw /sys/fs/cgroup
  fi
  for mnt in $(findmnt -rn -t cgroup,cgroup2 -o TARGET); do
    if findmnt -rn -o OPTIONS "$mnt" | grep -q '^ro'; then
      log_info "vflow: remounting $mnt read-write"
      mount -o remount,rw,bind "$mnt"
    fi
  done
}
vflow_cgroups_rw
# Nothing may leave the machine: limit egress before any name is resolved. kind looks
# up host.docker.internal (docker's resolver would forward it to the host's): answer it
# from /etc/hosts with the default gateway, kind's own fallback.
grep -q 'host[.]docker[.]internal' /etc/hosts ||
  echo "$(ip -4 route show default | awk '{ print $3; exit }') host.docker.internal" >>/etc/hosts
/kind/bin/vflow-egress-guard.sh
