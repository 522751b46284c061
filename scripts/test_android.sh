#!/usr/bin/env bash
# Compile android_app/core (pure Kotlin/JVM) and run its JUnit 5 tests, without Gradle or an
# Android SDK: kotlinc from npm (kept in a cache outside the repository), JUnit 5 and org.json
# (Android's implementation) from Debian. Run from anywhere; works on a fresh Debian 12 as root.
#
#   bash scripts/test_android.sh            # the last line: "android core: N passed, N failed"
#   MOBILEDIFF_CACHE=/tmp/c bash scripts/test_android.sh   # another cache folder
#   MOBILEDIFF_BUNDLE=out/bundle bash scripts/test_android.sh  # also load and verify an exported bundle
#
# Reruns skip what is already installed, and reuse the compiled classes while no source changed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

KOTLIN_VERSION=2.4.20
CACHE=${MOBILEDIFF_CACHE:-$HOME/.cache/mobilediff}
KOTLIN_HOME=$CACHE/kotlinc-$KOTLIN_VERSION/node_modules/kotlin-compiler
KOTLINC=$KOTLIN_HOME/bin/kotlinc
JUNIT=/usr/share/java/junit-platform-console-standalone.jar
ORG_JSON=/usr/share/java/com.android.json.jar
CORE=$REPO/android_app/core
BUILD=$CORE/build/ci

failed() { # a closing line even when we never got to run a test
    echo "android core: $1" >&2
    echo "android core: 0 passed, 1 failed"
    exit 1
}

# --- tools -------------------------------------------------------------------------------
packages=()
command -v java >/dev/null || packages+=(default-jre-headless)
command -v npm >/dev/null || [ -x "$KOTLINC" ] || packages+=(npm)
[ -f "$JUNIT" ] || packages+=(junit5)
[ -f "$ORG_JSON" ] || packages+=(libandroid-json-java)
if [ ${#packages[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "installing ${packages[*]} with apt-get"
    $sudo apt-get update -qq || failed "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null \
        || failed "apt-get install ${packages[*]} failed"
fi
if [ ! -x "$KOTLINC" ]; then
    echo "installing kotlinc $KOTLIN_VERSION from npm into $CACHE"
    mkdir -p "$CACHE/kotlinc-$KOTLIN_VERSION"
    npm install --prefix "$CACHE/kotlinc-$KOTLIN_VERSION" --no-audit --no-fund --loglevel=error \
        "kotlin-compiler@$KOTLIN_VERSION" >/dev/null || failed "npm install kotlin-compiler@$KOTLIN_VERSION failed"
fi

# --- compile (skipped when neither the sources nor the compiler changed) -----------------
stamp=$( (echo "$KOTLIN_VERSION"; cd "$CORE" && find src -type f -name '*.kt' -print0 | sort -z | xargs -0 sha256sum) \
    | sha256sum | cut -d' ' -f1)
if [ "$(cat "$BUILD/stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$BUILD"
    mkdir -p "$BUILD"
    echo "compiling android_app/core with kotlinc $KOTLIN_VERSION"
    "$KOTLINC" -jvm-target 17 -Werror -cp "$ORG_JSON" -d "$BUILD/core.jar" "$CORE/src/main/kotlin" \
        || failed "core does not compile"
    "$KOTLINC" -jvm-target 17 -Werror -cp "$BUILD/core.jar:$ORG_JSON:$JUNIT" -d "$BUILD/tests.jar" \
        "$CORE/src/test/kotlin" || failed "the core tests do not compile"
    echo "$stamp" >"$BUILD/stamp"
fi

# --- test --------------------------------------------------------------------------------
classpath=$BUILD/core.jar:$BUILD/tests.jar:$ORG_JSON:$KOTLIN_HOME/lib/kotlin-stdlib.jar
colors=()
[ -t 1 ] || colors=(--disable-ansi-colors)
set +e
java -Dmobilediff.repo="$REPO" ${MOBILEDIFF_BUNDLE:+"-Dmobilediff.bundle=$MOBILEDIFF_BUNDLE"} -jar "$JUNIT" --disable-banner --details=tree "${colors[@]}" \
    --class-path "$classpath" --scan-class-path "$BUILD/tests.jar" | tee "$BUILD/junit.log"
status=${PIPESTATUS[0]}
set -e
count() { sed -n "s/.*\[ *\([0-9]*\) $1 *\].*/\1/p" "$BUILD/junit.log" | tail -1; }
passed=$(count "tests successful")
failures=$(count "tests failed")
broken=$(count "containers failed") # a test class that could not even start
if [ -z "$passed" ] || [ -z "$failures" ] || [ -z "$broken" ]; then
    failed "the JUnit launcher did not report its counts (exit status $status)"
fi
failures=$((failures + broken))
echo "android core: $passed passed, $failures failed"
[ "$status" -eq 0 ] && [ "$failures" -eq 0 ]
