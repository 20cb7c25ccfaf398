# Builds the two real hosts from their source snapshots, as ../shared/hosts/README.md sets them up.
# Sourced by .ci/run; by hand: `source .ci/hosts.sh; build_comfyui SNAPSHOT DIR; build_a1111 SNAPSHOT DIR`.
# Each leaves DIR/<host folder> and DIR/venv (a few minutes and a few GB each).

# The torch pair that imports together on the CPU (torchvision for torch 2.13.0 does not).
HOST_TORCH=(torch==2.14.1 torchvision==0.29.1)

host_venv() {  # DIR: a venv with the torch pair, and a constraints file holding that pair at DIR/torch.txt
    python3 -m venv "$1/venv"
    printf '%s\n' "${HOST_TORCH[@]}" >"$1/torch.txt"
    "$1/venv/bin/pip" install -q "${HOST_TORCH[@]}"
}

build_comfyui() {  # SNAPSHOT DIR: ComfyUI's requirements without its torch lines, plus requests
    mkdir -p "$2" && tar xzf "$1" -C "$2"
    host_venv "$2"
    grep -vE '^(torch|torchvision|torchaudio)\s*$' "$2/ComfyUI/requirements.txt" >"$2/requirements.txt"
    "$2/venv/bin/pip" install -q -c "$2/torch.txt" -r "$2/requirements.txt" requests
}

build_a1111() {  # SNAPSHOT DIR: the pins of requirements_versions.txt (not torch, not setuptools), then CLIP
    mkdir -p "$2" && tar xzf "$1" -C "$2"
    host_venv "$2"
    tr -d '\r' <"$2/stable-diffusion-webui/requirements_versions.txt" \
        | grep -vE '^(torch|setuptools)([=<> ]|$)' >"$2/requirements.txt"
    "$2/venv/bin/pip" install -q -c "$2/torch.txt" -r "$2/requirements.txt"
    "$2/venv/bin/pip" install -q -c "$2/torch.txt" "setuptools>=77.0.3,<81" openai-clip==1.0.1
}
