#!/bin/sh
# build.sh IMAGES_KUSTOMIZATION — `make images`: builds services/<component>/Dockerfile for every tether/<component>
# image that IMAGES_KUSTOMIZATION (the kustomize `images:` list, the one place image names and tags are set)
# names, tagged newName:newTag, with docker or podman: the first of CONTAINER_ENGINES (default "docker
# podman") that answers `info`. Without one, says so in one line and exits 0. UV_VERSION (from the Makefile)
# is passed to the Dockerfiles' build stage.
set -eu

images=$1
engine=
for candidate in ${CONTAINER_ENGINES-docker podman}; do
    # `info` rather than `command -v`: a docker client without a reachable daemon cannot build either.
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" info >/dev/null 2>&1; then
        engine=$candidate
        break
    fi
done
if [ -z "$engine" ]; then
    echo "make images: no container engine found (docker or podman, answering \`info\`); no image built"
    exit 0
fi

# "component newName:newTag" for each tether/<component> entry of the images: list (kustomize keeps the name
# without newName, and the tag without newTag).
refs=$(awk '
    function value(s) { sub(/^[^:]*:[[:space:]]*/, "", s); sub(/[[:space:]]+#.*$/, "", s); gsub(/["\047]/, "", s); return s }
    function flush() {
        if (component == "") return
        print component, (ref == "" ? "tether/" component : ref) (tag == "" ? "" : ":" tag)
    }
    /^[[:space:]]*- / { flush(); component = ""; ref = ""; tag = "" }
    /^[[:space:]]*(- )?name:/ { name = value($0); if (name ~ /^tether\//) { component = name; sub(/^tether\//, "", component) } }
    /^[[:space:]]*(- )?newName:/ { ref = value($0) }
    /^[[:space:]]*(- )?newTag:/ { tag = value($0) }
    END { flush() }
' "$images")
if [ -z "$refs" ]; then
    echo "make images: $images names no tether/<component> image with newName and newTag; fix its images: list" >&2
    exit 2
fi

echo "$refs" | while read -r component ref; do
    echo "make images: $engine build $ref from services/$component/Dockerfile"
    "$engine" build --build-arg "UV_VERSION=${UV_VERSION:?UV_VERSION is set by the Makefile}" \
        --file "services/$component/Dockerfile" --tag "$ref" .
done
