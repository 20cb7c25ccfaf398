# The real hosts, built from their source snapshots as their setups that work on a CPU machine say, and the
# browser that opens ComfyUI's page. Sourced by .ci/run; by hand, in bash:
#   source .ci/hosts.sh; build_hosts SNAPSHOT_FOLDER WORK_FOLDER LOG_FOLDER
# leaves WORK/comfyui/{ComfyUI,venv}, WORK/a1111/{stable-diffusion-webui,venv} and
# WORK/reforge/{stable-diffusion-webui-reForge,venv} (a few GB each, several minutes). Pins replaced: .ci/README.md.

COMFYUI_SNAPSHOT=comfyui-0.3.64.tar.gz  # Comfy-Org/ComfyUI a125cd84b054
A1111_SNAPSHOT=a1111-1.10.1.tar.gz      # AUTOMATIC1111/stable-diffusion-webui v1.10.1
REFORGE_SNAPSHOT=reforge-2026-03-11.tar.gz  # Panchovix/stable-diffusion-webui-reForge 3b56b268ad91
SDNEXT_SNAPSHOT=sdnext-2026-07-23.tar.gz    # vladmandic/sdnext 058a7f0cf326
# The torch pair that imports together on the CPU (torchvision for torch 2.13.0 does not). Each host gets its
# own copy: a copy shared through a .pth file let A1111 see two numpy versions, and the extension's install.py
# (which pins every installed distribution) could then install nothing.
HOST_TORCH=(torch==2.14.1 torchvision==0.29.1)
PIP_INSTALL=(pip install -q --no-compile)

host_venv() {  # WORK HOST: WORK/HOST/venv with the torch pair, and WORK/torch.txt holding it as pip constraints
    printf '%s\n' "${HOST_TORCH[@]}" >"$1/torch.txt"
    python3 -m venv "$1/$2/venv"
    "$1/$2/venv/bin/python" -m "${PIP_INSTALL[@]}" "${HOST_TORCH[@]}"
}

build_comfyui() {  # SNAPSHOT WORK: ComfyUI's requirements without its torch lines, plus requests
    mkdir -p "$2/comfyui" && tar xzf "$1" -C "$2/comfyui"
    host_venv "$2" comfyui
    grep -vE '^(torch|torchvision|torchaudio)\s*$' "$2/comfyui/ComfyUI/requirements.txt" >"$2/comfyui/requirements.txt"
    "$2/comfyui/venv/bin/python" -m "${PIP_INSTALL[@]}" -c "$2/torch.txt" -r "$2/comfyui/requirements.txt" requests
}

build_a1111() {  # SNAPSHOT WORK: the pins of requirements_versions.txt (not torch, not setuptools), then CLIP
    mkdir -p "$2/a1111" && tar xzf "$1" -C "$2/a1111"
    host_venv "$2" a1111
    tr -d '\r' <"$2/a1111/stable-diffusion-webui/requirements_versions.txt" \
        | grep -vE '^(torch|setuptools)([=<> ]|$)' >"$2/a1111/requirements.txt"
    local pip=("$2/a1111/venv/bin/python" -m "${PIP_INSTALL[@]}" -c "$2/torch.txt")
    "${pip[@]}" -r "$2/a1111/requirements.txt"
    "${pip[@]}" "setuptools>=77.0.3,<81" openai-clip==1.0.1
}

build_reforge() {  # SNAPSHOT A1111_SNAPSHOT WORK: as A1111, with reForge's own pins (see .ci/README.md for
                  # the one replaced) and A1111's repositories/, which reForge's launcher would clone
    mkdir -p "$3/reforge" && tar xzf "$1" -C "$3/reforge"
    local webui=$3/reforge/stable-diffusion-webui-reForge
    tar xzf "$2" -C "$webui" --strip-components=1 stable-diffusion-webui/repositories
    host_venv "$3" reforge
    tr -d '\r' <"$webui/requirements_versions.txt" | grep -vE '^(torch|setuptools)([=<> ]|$)' \
        | sed -E 's|^https://.*/pydantic-([0-9.]+)-py3-none-any.whl$|pydantic==\1|' >"$3/reforge/requirements.txt"
    local pip=("$3/reforge/venv/bin/python" -m "${PIP_INSTALL[@]}" -c "$3/torch.txt")
    "${pip[@]}" -r "$3/reforge/requirements.txt"
    "${pip[@]}" "setuptools>=77.0.3,<81" openai-clip==1.0.1
}

#: What SD.Next's installer would add at start (installer.py: pydantic, scipy, opencv, gradio's dependencies; gradio
#: itself without its dependencies, as it does), with diffusers and transformers at the releases of the git
#: commits it pins (see .ci/README.md).
SDNEXT_EXTRAS=(aiofiles ffmpy pydub uvicorn semantic-version altair python-multipart matplotlib importlib-resources
               pydantic==2.13.4 scipy==1.14.1 opencv-python-headless==4.13.0.92 diffusers==0.39.0
               transformers==5.13.0)
SDNEXT_NO_DEPS=(gradio==3.43.2 gradio-client==0.5.0 compel==2.4.0)

build_sdnext() {  # SNAPSHOT WORK: SD.Next's requirements.txt (not its linters) and its installer's extras; started
                  # with --skip-all so that its installer neither installs nor reaches git
    mkdir -p "$2/sdnext" && tar xzf "$1" -C "$2/sdnext"
    host_venv "$2" sdnext
    grep -vE '^(ruff|pylint|pre-commit|setuptools==.*)\s*$' "$2/sdnext/sdnext/requirements.txt" >"$2/sdnext/requirements.txt"
    local pip=("$2/sdnext/venv/bin/python" -m "${PIP_INSTALL[@]}" -c "$2/torch.txt")
    "${pip[@]}" -r "$2/sdnext/requirements.txt" "${SDNEXT_EXTRAS[@]}" "setuptools>=77.0.3,<81" &&
        "${pip[@]}" --no-deps "${SDNEXT_NO_DEPS[@]}"
}

ensure_chromium() {  # Debian's Chromium, for playwright's executable_path (playwright's own download cannot work here)
    command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
}

build_hosts() {  # SNAPSHOTS WORK LOGS: the hosts (in parallel), Chromium, and in ComfyUI's venv the node
                 # pack's requirements (as its README says) and playwright for the browser checks
    local snapshots=$1 work=$2 logs=$3
    ensure_chromium >"$logs/build-chromium.log" 2>&1 &
    local chromium=$!
    build_comfyui "$snapshots/$COMFYUI_SNAPSHOT" "$work" >"$logs/build-comfyui.log" 2>&1 &
    local comfyui=$!
    build_reforge "$snapshots/$REFORGE_SNAPSHOT" "$snapshots/$A1111_SNAPSHOT" "$work" >"$logs/build-reforge.log" 2>&1 &
    local reforge=$!
    build_a1111 "$snapshots/$A1111_SNAPSHOT" "$work" >"$logs/build-a1111.log" 2>&1 || return 1
    wait "$comfyui" || return 1
    wait "$reforge" || return 1
    wait "$chromium" || return 1
    "$work/comfyui/venv/bin/python" -m "${PIP_INSTALL[@]}" -c "$work/torch.txt" -r requirements.txt playwright \
        >>"$logs/build-comfyui.log" 2>&1
}

stop_processes_under() {  # DIR: TERM, then KILL, every process whose command line names DIR
    local pids
    pids=$(grep -lsaF -- "$1" /proc/[0-9]*/cmdline | cut -d/ -f3 | grep -vx "$$") || return 0
    kill $pids 2>/dev/null || true
    sleep 3
    kill -KILL $pids 2>/dev/null || true
}
