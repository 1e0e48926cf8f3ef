# shellcheck shell=bash
# Shared by tools/build-bwrap, tools/build-fuse-overlayfs and tools/build-unionfs (sourced, from the
# repository's root, with ROOT set): build a tool fully static against musl from Debian source
# packages, fetched through the Debian archive only as far as trust goes.
#
# Sources come through apt with a private configuration under .build/<name>/apt (the host's apt
# configuration is not changed): `apt-get update` checks the signed InRelease of the suite against
# bookworm's debian-archive-keyring (trixie's Release is signed by the bookworm archive key as well as
# trixie's), and every file is fetched by apt with the SHA256 that index gives. The .dsc is written
# from that same index rather than downloaded: some archive front-ends do not serve .dsc and .asc
# files, and neither would add trust (their signatures need debian-keyring; their hashes are in the
# signed index). dpkg-source then checks the hashes again and applies Debian's patches.
#
# A file the mirror does not serve may be looked for in FIM_SOURCE_FALLBACK_POOLS (none by default:
# the build reaches the Debian archive only; the Ubuntu archive's pools carry the same upstream
# tarballs): it is accepted only with the SHA256 of Debian's signed index, so trust does not change. A package fetched with `--orig-ok` may go without
# its Debian revision tarball when no source serves it: its upstream tarball (hash-checked) is then
# unpacked alone, with a warning, and the cache key says so.
#
# Env: FIM_DEBIAN_MIRROR          the Debian archive to use (default http://deb.debian.org/debian)
#      FIM_SOURCE_FALLBACK_POOLS  pool directories tried when the mirror lacks a file, a Debian
#                                 pool/<component>/ path being looked up below each (space-separated;
#                                 default none), e.g. "http://archive.ubuntu.com/ubuntu/pool/main
#                                 http://archive.ubuntu.com/ubuntu/pool/universe"

SELF=tools/${0##*/}
die() { printf '%s: %s\n' "$SELF" "$*" >&2; exit 1; }
say() { printf '%s: %s\n' "$SELF" "$*" >&2; }

MIRROR=${FIM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
FALLBACK_POOLS=${FIM_SOURCE_FALLBACK_POOLS-}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
APT_HELPER=/usr/lib/apt/apt-helper

[[ $(uname -m) == x86_64 ]] || die "only x86_64 hosts are supported (this is $(uname -m))"

# Every missing tool at once, as one install line: need ... for each, then need_done.
missing=()
need() { # COMMAND-OR-PATH PACKAGE
    if [[ $1 == /* ]]; then [[ -e $1 ]]; else command -v "$1" >/dev/null; fi && return
    [[ " ${missing[*]} " == *" $2 "* ]] || missing+=("$2")
}
# What every build here needs: apt and the archive key, dpkg-source, musl's gcc wrapper and the
# kernel's headers, readelf for the proof.
need_common() {
    need apt-get apt
    need "$APT_HELPER" apt
    need "$KEYRING" debian-archive-keyring
    need dpkg-source dpkg-dev
    need musl-gcc musl-tools
    need gcc gcc
    need make make
    need /usr/include/linux/limits.h linux-libc-dev
    need readelf binutils
    need xz xz-utils
}
need_done() {
    [[ ${#missing[@]} -eq 0 ]] || die "missing tools: apt-get install -y ${missing[*]}"
}

# cache_init NAME: downloads, builds and the log go to .build/NAME.
cache_init() {
    CACHE=$ROOT/.build/$1
    LOG=$CACHE/log
    mkdir -p "$CACHE"/{apt/lists/partial,apt/cache,apt/sources.list.d,src}
    : >"$LOG"
}

# quiet DESCRIPTION COMMAND...: run COMMAND with its output in the log, shown only on failure.
quiet() {
    local what=$1
    shift
    printf '\n==> %s\n' "$*" >>"$LOG"
    "$@" </dev/null >>"$LOG" 2>&1 || { tail -n 25 "$LOG" >&2; die "$what failed (whole log: $LOG)"; }
}

# debian_index SUITE: the signed index of SUITE's sources, with a private apt configuration.
debian_index() {
    SUITE=$1
    printf 'deb-src [signed-by=%s] %s %s main\n' "$KEYRING" "$MIRROR" "$SUITE" >"$CACHE/apt/sources.list"
    APT=(-o "Dir::Etc::SourceList=$CACHE/apt/sources.list" -o "Dir::Etc::SourceParts=$CACHE/apt/sources.list.d"
        -o "Dir::State::Lists=$CACHE/apt/lists" -o "Dir::Cache=$CACHE/apt/cache" -o APT::Get::List-Cleanup=0)
    quiet "apt-get update of $SUITE's Sources from $MIRROR" apt-get "${APT[@]}" -q update --error-on=any
}

# download DIRECTORY NAME SHA256: fetch NAME into $CACHE/src from the mirror's DIRECTORY, else from
# the fallback pools; fails when no source serves it with that hash.
download() {
    local dir=$1 name=$2 hash=$3 url pool
    local urls=("$MIRROR/$dir/$name")
    for pool in $FALLBACK_POOLS; do urls+=("$pool/${dir#pool/*/}/$name"); done
    for url in "${urls[@]}"; do
        printf '\n==> %s download-file %s\n' "$APT_HELPER" "$url" >>"$LOG"
        if "$APT_HELPER" download-file "$url" "$CACHE/src/$name" "SHA256:$hash" </dev/null >>"$LOG" 2>&1; then
            [[ $url == "$MIRROR/"* ]] || say "$name is not on $MIRROR: fetched from $url (SHA256 from Debian's signed index)"
            return 0
        fi
    done
    return 1
}

# debian_fetch PKG [--orig-ok]: download the source of PKG in $SUITE into $CACHE/src (files already
# there and matching their hash are kept), write its .dsc, and set VERSION and DSC. With --orig-ok,
# a Debian revision tarball that no source serves is left out (see the header): ORIG_ONLY=1 then.
debian_fetch() {
    local pkg=$1 orig_ok=${2:-} record dir hash name
    record=$(apt-cache "${APT[@]}" showsrc --only-source "$pkg" | awk 'BEGIN { RS = "" } NR == 1') ||
        die "apt-cache showsrc $pkg failed"
    [[ -n $record ]] || die "no source package '$pkg' in $SUITE's index"
    field() { sed -n "s/^$1: //p" <<<"$record"; }
    # The lines of a multi-line field, without the .dsc and the upstream signature (see the header).
    files() { awk -v f="$1:" '/^[^ ]/ { on = ($1 == f) } on && /^ / && $3 !~ /\.(dsc|asc)$/' <<<"$record"; }
    VERSION=$(field Version)
    dir=$(field Directory)
    ORIG_ONLY=0
    while read -r hash _ name; do
        sha256sum --status -c <<<"$hash  $CACHE/src/$name" 2>/dev/null && continue
        download "$dir" "$name" "$hash" && continue
        if [[ $orig_ok == --orig-ok && $name == *.debian.tar.* ]]; then
            ORIG_ONLY=1
            say "warning: no source serves $name: building $pkg from its upstream tarball alone, without Debian's packaging"
            continue
        fi
        tail -n 25 "$LOG" >&2
        die "download of $name failed (whole log: $LOG)"
    done < <(files Checksums-Sha256)
    DSC=$CACHE/src/${pkg}_${VERSION#*:}.dsc
    {
        printf 'Format: %s\nSource: %s\nVersion: %s\n' "$(field Format)" "$pkg" "$VERSION"
        printf 'Files:\n%s\nChecksums-Sha256:\n%s\n' "$(files Files)" "$(files Checksums-Sha256)"
    } >"$DSC"
    if [[ $ORIG_ONLY -eq 1 ]]; then : >"$DSC.orig-only"; else rm -f "$DSC.orig-only"; fi
}

# debian_unpack DSC DIR: dpkg-source -x, or, for a package fetched without its Debian revision
# tarball, its upstream tarball (checked again against the .dsc) unpacked alone.
debian_unpack() {
    local dsc=$1 dir=$2 hash name orig=()
    if [[ ! -e $dsc.orig-only ]]; then
        quiet "unpacking ${dsc##*/}" dpkg-source -x "$dsc" "$dir"
        return
    fi
    while read -r hash _ name; do
        case $name in
            *.debian.tar.*) continue ;;
            *.orig.tar.*) orig+=("$name") ;;
            *) die "${dsc##*/}: cannot unpack $name without dpkg-source" ;;
        esac
        sha256sum --status -c <<<"$hash  $CACHE/src/$name" || die "$name does not match its SHA256"
    done < <(awk '/^[^ ]/ { on = ($1 == "Checksums-Sha256:") } on && /^ /' "$dsc")
    [[ ${#orig[@]} -eq 1 ]] || die "${dsc##*/}: expected one upstream tarball, found ${#orig[@]}"
    mkdir -p "$dir"
    quiet "unpacking ${orig[0]}" tar -xf "$CACHE/src/${orig[0]}" -C "$dir" --strip-components=1
}

# apply_patches DIR PATCH...: apply each patch (-p1) to the source tree in DIR, in order.
apply_patches() {
    local dir=$1 p
    shift
    for p in "$@"; do
        quiet "applying ${p#"$ROOT"/}" patch -d "$dir" -p1 --forward --batch -i "$p"
    done
}

# kernel_headers DIR: musl-gcc sees only musl's headers; DIR gets the kernel's (linux/*.h and asm).
kernel_headers() {
    local d
    mkdir -p "$1"
    for d in linux asm-generic x86_64-linux-gnu/asm; do ln -sfn "/usr/include/$d" "$1/"; done
}

# recipe_hash FILE...: one hash of the files that make a build (scripts, patches), for cache keys.
recipe_hash() {
    cat -- "$@" | sha256sum | cut -d' ' -f1
}

# install_dist SRC NAME: copy SRC to dist/NAME, atomically and only when changed.
install_dist() {
    local src=$1 dst=dist/$2
    mkdir -p dist
    if ! cmp -s "$src" "$dst"; then
        cp "$src" "$dst.tmp.$$"
        chmod 0755 "$dst.tmp.$$"
        mv -f "$dst.tmp.$$" "$dst"
    fi
}

# have_userns_fuse: whether FUSE can be tried here as the root of a new user and mount namespace.
have_userns_fuse() {
    [[ -c /dev/fuse ]] && unshare -Urm true 2>/dev/null
}

# fuse_smoke BINARY overlayfs|unionfs: as the root of a new user and mount namespace where
# /bin/mount, /bin/umount and fusermount cannot run (/dev/null is bound over them), mount with
# BINARY -f in the background, as the launcher does, read a lower file and write a new one through
# the mount, then stop BINARY with SIGTERM: it must unmount by itself. Call where have_userns_fuse.
fuse_smoke() {
    local bin=$1 kind=$2 dir
    dir=$(mktemp -d "${TMPDIR:-/tmp}/fim-fuse-smoke.XXXXXX") || die "mktemp failed"
    mkdir -p "$dir"/{l,u,w,m}
    echo lower >"$dir/l/f"
    # shellcheck disable=SC2016 # expanded by the inner shell
    (quiet "mounting with $bin in a user namespace, without mount, umount and fusermount" \
        unshare -Urm -- "$BASH" -c '
        set -eu
        bin=$1 kind=$2 d=$3 hide=()
        for p in fusermount fusermount3 umount mount; do
            p=$(command -v "$p") && hide+=("$(realpath "$p")")
        done
        for p in "${hide[@]}"; do mount --bind /dev/null "$p"; done
        if [ "$kind" = unionfs ]; then
            "$bin" -f -o cow "$d/u=RW:$d/l=RO" "$d/m" & pid=$!
        else
            "$bin" -f -o "lowerdir=$d/l,upperdir=$d/u,workdir=$d/w" "$d/m" & pid=$!
        fi
        for i in $(seq 100); do mountpoint -q "$d/m" && break; kill -0 $pid; sleep 0.05; done
        mountpoint -q "$d/m"
        [ "$(cat "$d/m/f")" = lower ]
        echo upper >"$d/m/g"
        [ "$(cat "$d/u/g")" = upper ]
        kill -TERM $pid
        wait $pid || true
        ! mountpoint -q "$d/m"
        echo "mounted, read, wrote and unmounted itself"
    ' fuse-smoke "$bin" "$kind" "$dir") || { rm -rf "$dir"; exit 1; }
    rm -rf "$dir"
}

# check_static FILE: no dynamic section and no program interpreter.
check_static() {
    local file=$1 dynamic headers
    dynamic=$(LC_ALL=C readelf -d "$file" 2>&1) || die "readelf -d $file failed: $dynamic"
    grep -q 'There is no dynamic section' <<<"$dynamic" ||
        die "$file is NOT static: it has a dynamic section (readelf -d $file)"
    headers=$(LC_ALL=C readelf -lW "$file" 2>&1) || die "readelf -l $file failed: $headers"
    if grep -q 'INTERP' <<<"$headers"; then
        die "$file is NOT static: it asks for a program interpreter (readelf -lW $file)"
    fi
}
