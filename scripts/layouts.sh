# Filesystem layouts for the mount tests: sourced by scripts/test.sh (needs root).
#
# Copy-up, whiteouts and renames behave differently when the layers and the upper sit on
# different filesystems (no reflink, no in-kernel copy_file_range, other xattr and mknod
# rules), so the same tests run in each layout. tests/common reads the variables a layout
# exports: STRATA_TEST_LAYOUT (its name), STRATA_TEST_LOWER_DIR (where fixtures put layers),
# STRATA_TEST_UPPER_DIR (upper, work, mountpoints) and STRATA_TEST_LOWER_RO=1 (layers are
# bind-mounted read-only before use, as image layers on a read-only disk are).
#
#   same         layers and upper on the host disk (ext4): the default without variables
#   ext4-tmpfs   layers on the host disk, upper on a tmpfs
#   tmpfs-ext4   layers on a tmpfs, upper on the host disk
#   tmpfs-tmpfs  layers and upper on two tmpfs instances
#   xfs          both on one xfs loop image (FICLONE reflinks copy-ups)
#   btrfs        both on one btrfs loop image (FICLONE too)
#   ro-tmpfs     layers on a read-only mount of the host disk, upper on a tmpfs

LAYOUTS_ALL=(same ext4-tmpfs tmpfs-ext4 tmpfs-tmpfs xfs btrfs ro-tmpfs)
layout_root=""
layout_mounts=()

# layout_fs KIND DIR: makes DIR a fresh filesystem of KIND (tmpfs, xfs, btrfs) or a plain
# directory on the host disk (ext4).
layout_fs() {
  local kind=$1 dir=$2
  mkdir -p "$dir"
  case "$kind" in
    ext4) ;;
    tmpfs) mount -t tmpfs -o size=4g,mode=0755 "strata-test-$kind" "$dir" || return 1 ;;
    xfs | btrfs)
      command -v "mkfs.$kind" >/dev/null || { echo "mkfs.$kind is not installed"; return 1; }
      truncate -s 2G "$dir.img"
      "mkfs.$kind" -q "$dir.img" >/dev/null 2>&1 || "mkfs.$kind" -f "$dir.img" >/dev/null || return 1
      mount -o loop "$dir.img" "$dir" || return 1
      chmod 0755 "$dir"
      ;;
  esac
  [ "$kind" = ext4 ] || layout_mounts+=("$dir")
}

# layout_up NAME: mounts what NAME needs and exports its variables; fails (with the reason on
# stdout) where this machine cannot make it.
layout_up() {
  local name=$1 lower upper
  layout_root=$(mktemp -d /var/tmp/strata-layout.XXXXXX)
  chmod 0755 "$layout_root"
  case "$name" in
    same) lower=ext4 upper=ext4 ;;
    ext4-tmpfs) lower=ext4 upper=tmpfs ;;
    tmpfs-ext4) lower=tmpfs upper=ext4 ;;
    tmpfs-tmpfs) lower=tmpfs upper=tmpfs ;;
    xfs) lower=xfs upper=xfs ;;
    btrfs) lower=btrfs upper=btrfs ;;
    ro-tmpfs) lower=ext4 upper=tmpfs ;;
    *) echo "unknown layout '$name' (known: ${LAYOUTS_ALL[*]})"; return 1 ;;
  esac
  export STRATA_TEST_LAYOUT=$name STRATA_TEST_LOWER_RO=0
  if [ "$lower" = "$upper" ] && [ "$lower" != tmpfs ]; then
    layout_fs "$lower" "$layout_root/both" || return 1
    STRATA_TEST_LOWER_DIR=$layout_root/both/lower STRATA_TEST_UPPER_DIR=$layout_root/both/upper
  else
    layout_fs "$lower" "$layout_root/lower" || return 1
    layout_fs "$upper" "$layout_root/upper" || return 1
    STRATA_TEST_LOWER_DIR=$layout_root/lower STRATA_TEST_UPPER_DIR=$layout_root/upper
  fi
  mkdir -p "$STRATA_TEST_LOWER_DIR" "$STRATA_TEST_UPPER_DIR"
  chmod 0755 "$STRATA_TEST_LOWER_DIR" "$STRATA_TEST_UPPER_DIR"
  [ "$name" = ro-tmpfs ] && STRATA_TEST_LOWER_RO=1
  export STRATA_TEST_LOWER_DIR STRATA_TEST_UPPER_DIR
  printf 'layout %s: layers in %s (%s), upper in %s (%s)%s\n' "$name" \
    "$STRATA_TEST_LOWER_DIR" "$(stat -f -c %T "$STRATA_TEST_LOWER_DIR")" \
    "$STRATA_TEST_UPPER_DIR" "$(stat -f -c %T "$STRATA_TEST_UPPER_DIR")" \
    "$([ "$STRATA_TEST_LOWER_RO" = 1 ] && echo ', layers read-only')"
}

# layout_down: unmounts and removes what layout_up made; safe to call twice.
layout_down() {
  local m i
  for ((i = ${#layout_mounts[@]} - 1; i >= 0; i--)); do
    m=${layout_mounts[i]}
    # Fixtures unmount their own mounts; anything a crashed test left is detached here.
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  layout_mounts=()
  [ -n "$layout_root" ] && rm -rf --one-file-system "$layout_root"
  layout_root=""
  unset STRATA_TEST_LAYOUT STRATA_TEST_LOWER_DIR STRATA_TEST_UPPER_DIR STRATA_TEST_LOWER_RO
}
