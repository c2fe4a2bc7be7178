#!/usr/bin/env bash
# Fetch ~40 freely licensed REAL photographs (1-16 MP JPEGs) for the throughput benchmark into bench/work/photos/.
#
# Source: Debian bookworm desktop-background packages, fetched with `apt-get download` and unpacked with
# `dpkg -x` under bench/work/ (nothing is installed system-wide):
#   lomiri-wallpapers-16.04 20.04.0-2   13 photos, 1.5-15.9 MP   CC-BY-4.0 / CC-BY-SA-4.0 / CC0-1.0 (per file)
#   lomiri-wallpapers-20.04 20.04.0-2   Kleiber (20.4 MP)         CC-BY-SA-3.0  (only used for derived files)
#   mate-backgrounds        1.26.0-1    12 photos, 1.3-4.9 MP     GPL-2+
#   plasma-workspace-wallpapers 4:5.27.5-2  11 photos, 4.1 MP     LGPLv3 (per wallpaper metadata.json)
# Illustrations/renders in those packages are left out. The shipped files are wallpaper-compressed (small
# bytes per pixel), so 4 "camera-like" files are DERIVED from the largest photos by re-encoding with Pillow at
# quality 100 (Kleiber centre-cropped to 16 MP): 6.5-13.6 MB, like DSLR / high-quality camera JPEGs. They are named
# derived_*. Every file's origin, author and licence is written to photos/SOURCES.tsv, the packages' copyright
# files to photos/LICENSES/. Photos are never committed (bench/work/ is git-ignored).
#
# Idempotent: a complete photos/ (all files in SOURCES.tsv present) is left as it is; the .debs are cached in
# bench/work/debs/. Needs apt-get (Debian), dpkg-deb and a Python with Pillow ($PYTHON, default: bench/work/venv,
# then the project's .venv, then python3). Prints count, total MB and min/max megapixels.
#
# Usage: bash bench/fetch_photos.sh [--force]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="$HERE/work"
OUT="$WORK/photos"
DEBS="$WORK/debs"

if [[ -z "${PYTHON:-}" ]]; then
  for p in "$WORK/venv/bin/python" "$HERE/../.venv/bin/python" python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import PIL' 2>/dev/null; then PYTHON="$p"; break; fi
  done
fi
: "${PYTHON:?no Python with Pillow found: set PYTHON or pip install -r bench/requirements.txt}"

PKGS=(
  "lomiri-wallpapers-16.04=20.04.0-2"
  "lomiri-wallpapers-20.04=20.04.0-2"
  "mate-backgrounds=1.26.0-1"
  "plasma-workspace-wallpapers=4:5.27.5-2"
)

# package|path inside the package|author|licence|output name
SELECTION=$(cat <<'EOF'
lomiri-wallpapers-16.04|usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg|Sander Klootwijk|CC-BY-SA-4.0|lomiri_Bridge_by_Sander_Klootwijk.jpg
lomiri-wallpapers-16.04|usr/share/backgrounds/Dragonfly_by_Bolly.jpg|Bolly|CC-BY-SA-4.0|lomiri_Dragonfly_by_Bolly.jpg
lomiri-wallpapers-16.04|usr/share/backgrounds/Picture_0B_by_freespace.jpg|Trevor "Freespace"|CC-BY-4.0|lomiri_Picture_0B_by_freespace.jpg
lomiri-wallpapers-16.04|usr/share/backgrounds/Picture_1A_by_freespace.jpg|Trevor "Freespace"|CC-BY-4.0|lomiri_Picture_1A_by_freespace.jpg
lomiri-wallpapers-16.04|usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg|Jakub Mede|CC-BY-4.0|lomiri_Wine_by_Jakkub_Mede.jpg
lomiri-wallpapers-16.04|usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg|Aitzol Berasategi|CC-BY-4.0|lomiri_aitzgorri_by_Aitzol_Berasategi.jpg
lomiri-wallpapers-16.04|usr/share/backgrounds/free_by_Peter_Nerlich.jpg|Peter Nerlich|CC-BY-SA-4.0|lomiri_free_by_Peter_Nerlich.jpg
lomiri-wallpapers-16.04|usr/share/backgrounds/friends_by_Aitzol_Berasategi.jpg|Aitzol Berasategi|CC-BY-4.0|lomiri_friends_by_Aitzol_Berasategi.jpg
lomiri-wallpapers-16.04|usr/share/backgrounds/greentock_by_Peter_Nerlich.jpg|Peter Nerlich|CC-BY-SA-4.0|lomiri_greentock_by_Peter_Nerlich.jpg
lomiri-wallpapers-16.04|usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg|Aitzol Berasategi|CC-BY-4.0|lomiri_life_by_Aitzol_Berasategi.jpg
lomiri-wallpapers-16.04|usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg|Aitzol Berasategi|CC-BY-4.0|lomiri_picosdeeuropa_by_Aitzol_Berasategi.jpg
lomiri-wallpapers-16.04|usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg|Clemens Engelhardt|CC0-1.0|lomiri_seeding_by_Clements_Engelhardt.jpg
lomiri-wallpapers-16.04|usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg|Aitzol Berasategi|CC-BY-4.0|lomiri_sunset_by_Aitzol_Berasategi.jpg
mate-backgrounds|usr/share/backgrounds/mate/nature/Aqua.jpg|Charles Barbin|GPL-2+|mate_Aqua.jpg
mate-backgrounds|usr/share/backgrounds/mate/nature/Blinds.jpg|Lennart Poettering|GPL-2+|mate_Blinds.jpg
mate-backgrounds|usr/share/backgrounds/mate/nature/Dune.jpg|Marco Cogoni|GPL-2+|mate_Dune.jpg
mate-backgrounds|usr/share/backgrounds/mate/nature/FreshFlower.jpg|Jens Ansorg|GPL-2+|mate_FreshFlower.jpg
mate-backgrounds|usr/share/backgrounds/mate/nature/Garden.jpg|Charles Barbin|GPL-2+|mate_Garden.jpg
mate-backgrounds|usr/share/backgrounds/mate/nature/GreenMeadow.jpg|Timothy Schellhase|GPL-2+|mate_GreenMeadow.jpg
mate-backgrounds|usr/share/backgrounds/mate/nature/LadyBird.jpg|Charles Barbin|GPL-2+|mate_LadyBird.jpg
mate-backgrounds|usr/share/backgrounds/mate/nature/RainDrops.jpg|blackcombwhistler07|GPL-2+|mate_RainDrops.jpg
mate-backgrounds|usr/share/backgrounds/mate/nature/Storm.jpg|Sergey Nazarov|GPL-2+|mate_Storm.jpg
mate-backgrounds|usr/share/backgrounds/mate/nature/TwoWings.jpg|Charles Barbin|GPL-2+|mate_TwoWings.jpg
mate-backgrounds|usr/share/backgrounds/mate/nature/Wood.jpg|Jean-François Fortin Tam|GPL-2+|mate_Wood.jpg
mate-backgrounds|usr/share/backgrounds/mate/nature/YellowFlower.jpg|Charles Barbin|GPL-2+|mate_YellowFlower.jpg
plasma-workspace-wallpapers|usr/share/wallpapers/BytheWater/contents/images/2560x1600.jpg|Maciej Wiklo|LGPL-3.0|plasma_BytheWater.jpg
plasma-workspace-wallpapers|usr/share/wallpapers/ColdRipple/contents/images/2560x1600.jpg|Risto Saukonpää|LGPL-3.0|plasma_ColdRipple.jpg
plasma-workspace-wallpapers|usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg|Dmitri Popov|LGPL-3.0|plasma_ColorfulCups.jpg
plasma-workspace-wallpapers|usr/share/wallpapers/DarkestHour/contents/images/2560x1600.jpg|Risto Saukonpää|LGPL-3.0|plasma_DarkestHour.jpg
plasma-workspace-wallpapers|usr/share/wallpapers/EveningGlow/contents/images/2560x1600.jpg|Ian Hex|LGPL-3.0|plasma_EveningGlow.jpg
plasma-workspace-wallpapers|usr/share/wallpapers/FallenLeaf/contents/images/2560x1600.jpg|Martin Klapetek|LGPL-3.0|plasma_FallenLeaf.jpg
plasma-workspace-wallpapers|usr/share/wallpapers/Grey/contents/images/2560x1600.jpg|Sigi Sagi|LGPL-3.0|plasma_Grey.jpg
plasma-workspace-wallpapers|usr/share/wallpapers/Kite/contents/images/2560x1600.jpg|Risto Saukonpää|LGPL-3.0|plasma_Kite.jpg
plasma-workspace-wallpapers|usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg|Risto Saukonpää|LGPL-3.0|plasma_OneStandsOut.jpg
plasma-workspace-wallpapers|usr/share/wallpapers/Path/contents/images/2560x1600.jpg|Risto Saukonpää|LGPL-3.0|plasma_Path.jpg
plasma-workspace-wallpapers|usr/share/wallpapers/summer_1am/contents/images/2560x1600.jpg|Risto Saukonpää|LGPL-3.0|plasma_summer_1am.jpg
EOF
)

# output name|package|source path|author|licence|max megapixels (centre crop)|quality|chroma subsampling
DERIVED=$(cat <<'EOF'
derived_Kleiber_16mp_q100_444.jpg|lomiri-wallpapers-20.04|usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg|Lukas Baubkus|CC-BY-SA-3.0|16|100|4:4:4
derived_Kleiber_16mp_q100_420.jpg|lomiri-wallpapers-20.04|usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg|Lukas Baubkus|CC-BY-SA-3.0|16|100|4:2:0
derived_seeding_q100_444.jpg|lomiri-wallpapers-16.04|usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg|Clemens Engelhardt|CC0-1.0|16|100|4:4:4
derived_Dragonfly_q100_444.jpg|lomiri-wallpapers-16.04|usr/share/backgrounds/Dragonfly_by_Bolly.jpg|Bolly|CC-BY-SA-4.0|16|100|4:4:4
EOF
)

stats() {
  "$PYTHON" - "$OUT" <<'EOF'
import os, sys
from PIL import Image
d = sys.argv[1]
fs = sorted(f for f in os.listdir(d) if f.lower().endswith((".jpg", ".jpeg")))
mp = [Image.open(os.path.join(d, f)).size for f in fs]
mp = [w * h / 1e6 for w, h in mp]
sz = [os.path.getsize(os.path.join(d, f)) / 1e6 for f in fs]
print(f"{len(fs)} photos in {d}: {sum(sz):.1f} MB total, {min(mp):.1f}-{max(mp):.1f} MP, "
      f"files {min(sz):.2f}-{max(sz):.1f} MB ({sum(s >= 8 for s in sz)} of 8 MB or more)")
EOF
}

complete() {
  [[ -f "$OUT/SOURCES.tsv" ]] || return 1
  local n=0
  while IFS=$'\t' read -r name _; do
    [[ "$name" == file ]] && continue
    [[ -s "$OUT/$name" ]] || return 1
    n=$((n + 1))
  done <"$OUT/SOURCES.tsv"
  [[ $n -eq 40 ]]
}

if [[ "${1:-}" != "--force" ]] && complete; then
  echo "photos already fetched (bash bench/fetch_photos.sh --force to redo)"
  stats
  exit 0
fi

mkdir -p "$DEBS"
have_debs() {
  local spec
  for spec in "${PKGS[@]}"; do
    ls "$DEBS/${spec%%=*}"_*.deb >/dev/null 2>&1 || return 1
  done
}
if ! have_debs; then
  for spec in "${PKGS[@]}"; do
    pkg="${spec%%=*}"
    ls "$DEBS/${pkg}"_*.deb >/dev/null 2>&1 && continue
    # apt-get download writes into the current directory; a pinned version first, then whatever is current
    if ! (cd "$DEBS" && apt-get download -q "$spec" 2>/dev/null); then
      echo "apt-get download $spec failed: running apt-get update and retrying (unpinned if need be)" >&2
      apt-get update -q >/dev/null
      (cd "$DEBS" && { apt-get download -q "$spec" || apt-get download -q "$pkg"; })
    fi
  done
fi

TMP="$(mktemp -d "$WORK/.unpack.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
for spec in "${PKGS[@]}"; do
  pkg="${spec%%=*}"
  deb="$(ls "$DEBS/${pkg}"_*.deb | sort | tail -1)"
  mkdir -p "$TMP/$pkg"
  dpkg-deb -x "$deb" "$TMP/$pkg"
done

rm -rf "$OUT"
mkdir -p "$OUT/LICENSES"
printf 'file\tpackage\tversion\tsource_path\tauthor\tlicense\tnote\n' >"$OUT/SOURCES.tsv"
pkgver() { dpkg-deb -f "$(ls "$DEBS/$1"_*.deb | sort | tail -1)" Version; }

while IFS='|' read -r pkg path author lic name; do
  [[ -z "$pkg" ]] && continue
  cp "$TMP/$pkg/$path" "$OUT/$name"
  printf '%s\t%s\t%s\t/%s\t%s\t%s\t%s\n' "$name" "$pkg" "$(pkgver "$pkg")" "$path" "$author" "$lic" "as shipped" \
    >>"$OUT/SOURCES.tsv"
done <<<"$SELECTION"

while IFS='|' read -r name pkg path author lic maxmp q ss; do
  [[ -z "$name" ]] && continue
  "$PYTHON" - "$TMP/$pkg/$path" "$OUT/$name" "$maxmp" "$q" "$ss" <<'EOF'
import sys
from PIL import Image
src, dst, maxmp, q, ss = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
im = Image.open(src).convert("RGB")
w, h = im.size
if w * h > maxmp * 1e6:  # centre crop along the long side down to maxmp megapixels
    if w >= h:
        nw = int(maxmp * 1e6 / h); im = im.crop(((w - nw) // 2, 0, (w - nw) // 2 + nw, h))
    else:
        nh = int(maxmp * 1e6 / w); im = im.crop((0, (h - nh) // 2, w, (h - nh) // 2 + nh))
im.save(dst, "JPEG", quality=q, subsampling=ss)
EOF
  printf '%s\t%s\t%s\t/%s\t%s\t%s\t%s\n' "$name" "$pkg" "$(pkgver "$pkg")" "$path" "$author" "$lic" \
    "derived: centre crop to <= ${maxmp} MP, re-encoded by Pillow at quality $q, $ss" >>"$OUT/SOURCES.tsv"
done <<<"$DERIVED"

for spec in "${PKGS[@]}"; do
  pkg="${spec%%=*}"
  cp "$TMP/$pkg/usr/share/doc/$pkg/copyright" "$OUT/LICENSES/$pkg.copyright"
done
for w in BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey Kite OneStandsOut Path summer_1am; do
  cp "$TMP/plasma-workspace-wallpapers/usr/share/wallpapers/$w/metadata.json" "$OUT/LICENSES/plasma_$w.metadata.json"
done

complete || { echo "photo set incomplete" >&2; exit 1; }
stats
