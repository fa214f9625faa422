#!/usr/bin/env bash
# Builds .gpu/ for bench/gpu_check.sh (`bash bench/gpu_check.sh --make-carry`): what the GPU
# machine's image lacks, for its Python 3.12, within the 64 MiB a device call carries.
#   .gpu/whl/*.whl   wheels of every package the platform needs that the image does not have
#                    (pydantic, FastAPI, uvicorn, datasets, DeepSpeed's hjson, Ray's own needs…)
#   .gpu/deepspeed.tar.xz  DeepSpeed as installed in this checkout's .venv (pure Python)
#   .gpu/ray.tar.xz  Ray 2.60's wheel unpacked without what no check runs (its Java jars, RLlib,
#                    the dashboard's web client) and xz-compressed: the wheel alone is 79 MB
# Needs this checkout's .venv (make setup) and the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PY:-.venv/bin/python}
ray_version=$($py -c 'import ray; print(ray.__version__)')
pydantic_version=$($py -c 'import pydantic; print(pydantic.VERSION)')
# the image's packages (/work/.library/device/KINDS.md, 2026-11-17): never carried
image="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
certifi charset-normalizer click cloudpickle filelock frozenlist fsspec grpcio h11 hf-xet httpcore
httpx huggingface-hub idna jinja2 joblib markupsafe msgpack multidict numpy packaging pandas
pillow pip prometheus-client propcache protobuf psutil pyarrow pygments python-dateutil pyyaml
regex requests rich sacrebleu safetensors scikit-learn scipy setuptools six sympy tensorboard
threadpoolctl tokenizers torch tqdm transformers typing-extensions urllib3 uvloop werkzeug
wheel wrapt xxhash yarl zipp matplotlib typer shellingham markdown-it-py mdurl py-cpuinfo
ninja einops triton nvidia-ml-py pytest"
# Ray's needs that no check uses: runtime environments (virtualenv), its profiler (py-spy)
unused="virtualenv distlib python-discovery py-spy"
platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
all=$(mktemp -d)
# shellcheck disable=SC2086
$py -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp $platforms -d "$all" \
  "ray[train,tune,serve]==$ray_version" "pydantic==$pydantic_version" hjson "fastapi>=0.110" \
  "datasets>=3.0" "tensorboardX>=2.6"
rm -rf .gpu && mkdir -p .gpu/whl
for w in "$all"/*.whl; do
  name=$(basename "$w" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')
  case " $(echo $image $unused) " in *" $name "*) continue ;; esac
  [ "$name" = ray ] && continue
  cp "$w" .gpu/whl/
done
unpacked=$(mktemp -d)
(cd "$unpacked" && unzip -q "$all"/ray-*.whl && rm -rf ray/jars ray/rllib ray/dashboard/client/build)
tar -C "$unpacked" -cf - . | xz -6 -T2 > .gpu/ray.tar.xz
# found, not imported: importing DeepSpeed prints its accelerator warning to stdout
site=$($py -c 'import importlib.util as u, os; print(os.path.dirname(os.path.dirname(u.find_spec("deepspeed").origin)))')
tar -C "$site" --exclude=__pycache__ -cf - deepspeed $(cd "$site" && ls -d deepspeed-*.dist-info) \
  | xz -6 -T2 > .gpu/deepspeed.tar.xz
rm -rf "$all" "$unpacked"
size=$(du -sm .gpu | cut -f1)
echo ".gpu: ${size} MiB ($(ls .gpu/whl | wc -l) wheels, Ray $ray_version trimmed and compressed, DeepSpeed compressed)"
if [ "$size" -gt 62 ]; then
  echo "over what one device call carries (64 MiB with the working tree): the GPU check cannot run as one call" >&2
  exit 1
fi
