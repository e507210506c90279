# Compiles the package's pure modules one at a time with swiftc, for programs built outside
# SwiftPM (the libFuzzer targets, the callgrind benchmark). Sourced by scripts/fuzz.sh and
# scripts/bench-instructions.sh.
#   swift_modules DIR "SWIFTC FLAGS" MODULE...   (dependencies first)
# leaves DIR/MODULE.o and DIR/MODULE.swiftmodule; link with -I DIR and the objects.
swift_modules() {
    local dir=$1 flags=$2 module
    shift 2
    mkdir -p "$dir"
    for module in "$@"; do
        # shellcheck disable=SC2086
        swiftc $flags -parse-as-library -wmo -module-name "$module" -emit-module -emit-module-path "$dir/$module.swiftmodule" \
            -I "$dir" -c Sources/"$module"/*.swift -o "$dir/$module.o" 2> >(grep -v "ld.gold: warning" >&2)
    done
}
