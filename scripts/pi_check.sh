#!/bin/bash
# Usage: scripts/pi_check.sh [bookworm] [trixie]        (as root; default: both; not for CI)
#
# The README's Raspberry Pi install, checked on emulated Pi OS roots (../shared/pi/: Debian arm64 under qemu-user,
# the Debian packages python3-picamera2 brings, and python3-bottleneck: a C extension built against the system numpy
# that stands in for picamera2's simplejpeg). For each suite, inside /var/tmp/pi-<suite> (built by
# make_arm64_root.sh if missing, ~7 min each the first time):
#   1. the README's Pi install exactly as written, read from README.md's "### Raspberry Pi" bash block (apt lines
#      aside: the root already has picamera2's Debian dependencies), in a fresh copy of the working tree
#      (git's tracked and untracked-not-ignored files: what a clone has, no .venv, no egg-info);
#   2. `import bottleneck` in the venv (fails, as picamera2's `import simplejpeg` does, if the venv put another numpy
#      ABI in front of the system's), and which numpy the venv sees;
#   3. `carvis layers` on an .h5 (no TensorFlow there: h5py alone), compared with the laptop's table;
#   4. `carvis render synthetic:frames=30 --model models/default.tflite -o DIR/` with TensorFlow absent (checked:
#      tensorflow, keras and tf_keras must not be importable), its PNGs decoded and compared pixel by pixel with the
#      laptop's render of the same command ($HOST_CARVIS, default .venv/bin/carvis); and the same model on the same
#      pixels: 8 real car frames (../shared/data/axionaut/frames, decoded once on the laptop and handed over as PNGs),
#      which takes the synthetic track's own drawing differences (below) out of the comparison.
#      Bit-exact is not expected: LiteRT's aarch64 kernels round differently from x86's (~3e-7 relative), OpenCV's
#      INTER_AREA resize can differ by 1 level, and a threshold turns such a difference into a whole pixel on or off.
#      The synthetic track itself is drawn 1-2 levels differently on aarch64 (~78% of pixels, even with the laptop's
#      own OpenCV 5.0 and numpy 2.4), and minmax + threshold amplify that. So: "rounding" = at most 0.1% of the
#      pixels differ on the same frames; "near" = at most 5% of the synthetic render's pixels off by more than 2.
#   5. an ONNX model on onnxruntime (the install's [onnx] extra) with the system numpy: `carvis render` of the same
#      8 frames with tests/data/pilotnet.onnx (a PyTorch export, NCHW) in --mode vbp, compared with the laptop's
#      render: "rounding" = at most 0.1% of the pixels off by more than 2 levels (OpenCV 4.11's resize and colormap
#      against the laptop's 5.x differ by 1-2 levels; the maps themselves agree within 3e-7 relative). No --hud
#      here: its text is drawn differently by those two OpenCVs on every frame, whatever the model.
#   6. a video's crop cut as it decodes (carvis.sources.region: the system's PyAV and FFmpeg from apt, the venv's
#      OpenCV): 20 frames of the race clip as H.264; cut or not (PyAV too old, pixels differ), the frames must equal
#      OpenCV's to the bit.
# Then prints a table; exit 0 when every suite passes. Takes ~3.5 min for both on this 2-core machine once the roots
# exist. Emulated timing means nothing (qemu): the seconds say how long the check takes, not how fast a Pi is.
# Env: PI_INSTALL=file   install lines to use instead of the README's block (to try a change before the README has it)
#      H5=file.h5        (default ../shared/data/axionaut/autopilot.hdf5)   KEEP=1  keep the work dir (/tmp/pi_check.*)
#      PI_DIR=dir        (default ../shared/pi)                             HOST_CARVIS=path
# pip's cache stays in each root (/root/.cache/pip), as on a Pi: a second run downloads nothing.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PI_DIR=$(realpath "${PI_DIR:-$REPO/../shared/pi}")
H5=$(realpath "${H5:-$REPO/../shared/data/axionaut/autopilot.hdf5}")
FRAMES=$(realpath "${FRAMES:-$REPO/../shared/data/axionaut/frames}")
HOST_CARVIS=${HOST_CARVIS:-$REPO/.venv/bin/carvis}
HOST_PY=$(dirname "$HOST_CARVIS")/python
SUITES=${*:-bookworm trixie}
RENDER=(render "synthetic:frames=30" --model models/default.tflite --quiet)
ONNX_RENDER=(--model tests/data/pilotnet.onnx --mode vbp --quiet)
[ "$(id -u)" -eq 0 ] || { echo "pi_check: run as root (chroot, mounts)" >&2; exit 2; }
[ -x "$HOST_CARVIS" ] || { echo "pi_check: no laptop carvis at $HOST_CARVIS (HOST_CARVIS=...)" >&2; exit 2; }
WORK=$(mktemp -d /tmp/pi_check.XXXXXX)
[ -n "${KEEP:-}" ] || trap 'rm -rf --one-file-system "$WORK"' EXIT

# The install lines: README.md's first ```bash block after "### Raspberry Pi", apt lines dropped.
if [ -n "${PI_INSTALL:-}" ]; then cp "$PI_INSTALL" "$WORK/install.sh"
else awk '/^### Raspberry Pi/ {s=1} s && /^```bash/ {b=1; next} b && /^```/ {exit} b' "$REPO/README.md" > "$WORK/install.sh"
fi
grep -vE '^\s*(sudo )?apt(-get)? ' "$WORK/install.sh" | grep -vE '^\s*(#|$)' > "$WORK/install.run" || true
[ -s "$WORK/install.run" ] || { echo "pi_check: no install lines found (README's Raspberry Pi bash block)" >&2; exit 2; }
echo "pi_check: install lines:"; sed 's/^/    /' "$WORK/install.run"

# The laptop's reference: the same render and layer table.
t=$SECONDS
(cd "$REPO" && "$HOST_CARVIS" "${RENDER[@]}" -o "$WORK/host-render/" >/dev/null)
(cd "$REPO" && "$HOST_CARVIS" layers "$H5") > "$WORK/host-layers.txt"
"$HOST_PY" - "$FRAMES" "$WORK/frames" <<'PY'
import sys
from pathlib import Path
import cv2
out = Path(sys.argv[2]); out.mkdir()
for p in sorted(Path(sys.argv[1]).glob("*.jpg"))[:8]:
    cv2.imwrite(str(out / (p.stem + ".png")), cv2.imread(str(p)))
PY
(cd "$REPO" && "$HOST_CARVIS" render "$WORK/frames" --model models/default.tflite --quiet -o "$WORK/host-frames/" >/dev/null)
(cd "$REPO" && "$HOST_CARVIS" render "$WORK/frames" "${ONNX_RENDER[@]}" -o "$WORK/host-onnx/" >/dev/null)
ffmpeg -v error -i "$FRAMES/../race.mp4" -frames:v 20 -vf scale=640:360 -c:v libx264 -pix_fmt yuv420p "$WORK/clip.mp4"
echo "pi_check: laptop reference $((SECONDS - t))s"

# What runs inside a root: /src is a fresh copy of the working tree, read-write (it lives in $WORK on the host).
cat > "$WORK/inner.sh" <<'EOF'
set -uo pipefail
cd /src
out=/src/.pi_check; log=$out/inner.log
: > $out/result
res() { echo "$1=$2" >> $out/result; }
t=$(date +%s)
if bash -eux $out/install.run >> $log 2>&1; then res install ok; else res install FAIL; fi
res install_s $(( $(date +%s) - t ))
PY=/src/.venv/bin/python
res python "$($PY -c 'import platform; print(platform.python_version())' 2>>$log || echo '?')"
res numpy "$($PY -c 'import numpy, os; print(numpy.__version__ + ("(system)" if numpy.__file__.startswith("/usr/lib/python3/") else "(venv)"))' 2>>$log || echo '?')"
res cv2 "$($PY -c 'import cv2; print(cv2.__version__)' 2>>$log || echo '?')"
if $PY -c 'import bottleneck, numpy; assert bottleneck.nansum(numpy.array([1.0, numpy.nan, 2.0])) == 3.0' >> $log 2>&1
then res bottleneck ok; else res bottleneck FAIL; fi
# TensorFlow must be absent (a LiteRT-only car): carvis then cannot use it, whatever it tries.
if $PY -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ("tensorflow", "keras", "tf_keras")))' >> $log 2>&1
then res no_tf ok; else res no_tf FAIL; fi
t=$(date +%s)
if /src/.venv/bin/carvis layers $out/model.h5 > $out/layers.txt 2>> $log; then res layers ok; else res layers FAIL; fi
if /src/.venv/bin/carvis "$@" -o $out/render/ >> $log 2>&1; then res render ok; else res render FAIL; fi
if /src/.venv/bin/carvis render $out/frames --model models/default.tflite --quiet -o $out/render-frames/ >> $log 2>&1
then res render_frames ok; else res render_frames FAIL; fi
if /src/.venv/bin/carvis render $out/frames --model tests/data/pilotnet.onnx --mode vbp --quiet -o $out/render-onnx/ >> $log 2>&1
then res render_onnx ok; else res render_onnx FAIL; fi
res onnxruntime "$($PY -c 'import onnxruntime; print(onnxruntime.__version__)' 2>>$log || echo '?')"
# 6. a video's crop cut as it decodes (the system's PyAV and FFmpeg against the venv's OpenCV):
#    cut or not, the frames must be OpenCV's to the bit
res cut "$($PY - $out/clip.mp4 <<'PY' 2>>$log || echo FAIL
import sys
import av, numpy as np
from carvis.sources import VideoFileSource
box = (100, 300, 40, 600)
with VideoFileSource(sys.argv[1]) as s:
    whole = [f.image for f in s]
with VideoFileSource(sys.argv[1]) as s:
    cut = s.crop_at_decode(box)
    got = [f.image for f in s]
want = [w[100:300, 40:600] if cut else w for w in whole]
same = len(got) == len(want) == 20 and all(np.array_equal(a, b) for a, b in zip(got, want))
print(f"{'cut' if cut else 'whole'} (PyAV {av.__version__}), {'exact' if same else 'NO'}")
PY
)"
res checks_s $(( $(date +%s) - t ))
EOF

summary=()
for suite in $SUITES; do
  t0=$SECONDS
  ROOT=/var/tmp/pi-$suite
  if [ ! -e "$ROOT/opt/venv/.stamp" ]; then
    echo "pi_check: building $ROOT (make_arm64_root.sh, ~7 min)"
    SUITE=$suite "$PI_DIR/make_arm64_root.sh" "$ROOT" > "$WORK/make-$suite.log" 2>&1 ||
      { tail -20 "$WORK/make-$suite.log"; exit 1; }
  fi
  src=$WORK/$suite/src; mkdir -p "$src/.pi_check"
  (cd "$REPO" && git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
    tar -c --null -T - | tar -x -C "$src")
  cp "$WORK/install.run" "$WORK/inner.sh" "$src/.pi_check/"; cp "$H5" "$src/.pi_check/model.h5"
  cp -r "$WORK/frames" "$src/.pi_check/frames"; cp "$WORK/clip.mp4" "$src/.pi_check/"
  echo "pi_check: $suite: install + checks inside $ROOT (log: $src/.pi_check/inner.log)"
  SRC=$src SRC_RW=1 "$PI_DIR/arm64_run.sh" "$ROOT" /bin/bash /src/.pi_check/inner.sh "${RENDER[@]}" || true
  declare -A r=(); while IFS='=' read -r k v; do r[$k]=$v; done < "$src/.pi_check/result"
  # layers: the same table as the laptop's (an .h5's config read by h5py alone vs the laptop's carvis)
  layers=${r[layers]:-FAIL}
  if [ "$layers" = ok ] && ! diff -q "$WORK/host-layers.txt" "$src/.pi_check/layers.txt" >/dev/null; then
    layers="ok, differs"; diff "$WORK/host-layers.txt" "$src/.pi_check/layers.txt" > "$WORK/$suite/layers.diff" || true
  fi
  compare() {  # laptop's PNG folder, the root's, levels, max share of pixels off by more than that, verdict word
    "$HOST_PY" - "$1" "$2" "$3" "$4" "$5" <<'PY'
import sys
from pathlib import Path
import cv2, numpy as np
a, b = (sorted(Path(d).glob("*.png")) for d in sys.argv[1:3])
levels, share, word = int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
if not a or [p.name for p in a] != [p.name for p in b]:
    print(f"NO: {len(a)} vs {len(b)} frames"); sys.exit()
worst = diff = off = total = 0
for p, q in zip(a, b):
    x, y = cv2.imread(str(p)), cv2.imread(str(q))
    if x.shape != y.shape:
        print(f"NO: {p.name} {x.shape} vs {y.shape}"); sys.exit()
    d = np.abs(x.astype(int) - y.astype(int)).max(axis=2)
    worst, diff, off, total = max(worst, int(d.max())), diff + (d > 0).sum(), off + (d > levels).sum(), total + d.size
verdict = "exact" if worst == 0 else (word if off <= share * total else "NO")
print(f"{verdict}: {len(a)} fr, {100 * diff / total:.3g}% px differ, {100 * off / total:.2g}% by >{levels}, max {worst}")
PY
  }
  render=${r[render]:-FAIL} frames=${r[render_frames]:-FAIL} onnxr=${r[render_onnx]:-FAIL}
  [ "$render" = ok ] && render=$(compare "$WORK/host-render" "$src/.pi_check/render" 2 0.05 near)
  [ "$frames" = ok ] && frames=$(compare "$WORK/host-frames" "$src/.pi_check/render-frames" 0 0.001 rounding)
  [ "$onnxr" = ok ] && onnxr=$(compare "$WORK/host-onnx" "$src/.pi_check/render-onnx" 2 0.001 rounding)
  [ "${r[install]:-FAIL}" = ok ] || { echo "pi_check: $suite: install failed:"; tail -25 "$src/.pi_check/inner.log"; }
  [ "${r[bottleneck]:-FAIL}" = ok ] || grep -m3 -E 'Error|error' "$src/.pi_check/inner.log" | sed 's/^/    /' || true
  summary+=("$suite|${r[python]:-?}|${r[numpy]:-?}|${r[cv2]:-?}|${r[install]:-FAIL}|${r[bottleneck]:-FAIL}|${r[no_tf]:-FAIL}|$layers|$render|$frames|${r[onnxruntime]:-?}: $onnxr|${r[cut]:-FAIL}|$((SECONDS - t0)) (install ${r[install_s]:-?}, checks ${r[checks_s]:-?})")
  cp "$src/.pi_check/inner.log" "$WORK/$suite/inner.log"
  [ -n "${KEEP:-}" ] || rm -rf --one-file-system "$src"
  unset r
done

echo
{ echo "suite|python|numpy in venv|cv2|install|bottleneck|no TF|layers (.h5)|render synthetic vs laptop|render same frames vs laptop|onnxruntime: ONNX render vs laptop|video crop cut at decode|seconds"
  printf '%s\n' "${summary[@]}"; } | column -t -s '|'
bad=0; for s in "${summary[@]}"; do IFS='|' read -r _ _ np _ in bn tf ly rd fr ox ct _ <<< "$s"
  [[ $in = ok && $bn = ok && $tf = ok && $ly = ok && $rd =~ ^(exact|near) && $fr =~ ^(exact|rounding) &&
     ${ox#*: } =~ ^(exact|rounding) && $ct = *", exact" &&
     $np = *"(system)" ]] || bad=1; done
[ -n "${KEEP:-}" ] && echo "pi_check: work dir kept: $WORK"
exit $bad
