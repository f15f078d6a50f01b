# Shared by scripts/test.sh, scripts/demo.sh and scripts/bench.sh: install what
# they need on a fresh machine. Source it; it defines functions only.

# redis-server must be on PATH: the tests, the demo and the benchmarks start
# their own on a free port. Install it from Debian's packages where we can.
ensure_redis_server() {
    command -v redis-server >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "redis-server not found: installing it with apt-get" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
        # The package starts a system service on 6379; we never use it.
    fi
    command -v redis-server >/dev/null 2>&1 && return 0
    echo "redis-server is required: install it (Debian/Ubuntu: sudo apt-get install -y redis-server; macOS: brew install redis) and run this again" >&2
    exit 1
}

# The tests run again with RabbitMQ as the broker, on a node of their own
# (tests/rabbitmq.py): Debian's rabbitmq-server. Its package also starts a
# system service on 5672; the tests never use it.
ensure_rabbitmq_server() {
    command -v rabbitmq-server >/dev/null 2>&1 && return 0
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "rabbitmq-server not found: installing it with apt-get" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
    fi
    command -v rabbitmq-server >/dev/null 2>&1 && return 0
    echo "rabbitmq-server is required by the tests with RabbitMQ as the broker (Debian/Ubuntu: sudo apt-get install -y rabbitmq-server; macOS: brew install rabbitmq)" >&2
    exit 1
}

# The TLS tests make their certificates with openssl; the cluster tests form
# a cluster with redis-cli (Debian's redis-server brings it as redis-tools).
ensure_topology_tools() {
    command -v openssl >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "openssl or redis-cli not found: installing them with apt-get" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl redis-tools >/dev/null
    fi
    command -v openssl >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 && return 0
    echo "openssl and redis-cli are required by the TLS and cluster tests (Debian/Ubuntu: sudo apt-get install -y openssl redis-tools)" >&2
    exit 1
}

# The locks page is tested in headless Chromium, driven by Selenium through
# Debian's chromedriver (Selenium is never left to download a driver).
ensure_chromium() {
    command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "chromium or chromedriver not found: installing them with apt-get" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    fi
    command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && return 0
    echo "chromium and chromedriver are required by the locks page's tests (Debian/Ubuntu: sudo apt-get install -y chromium chromium-driver)" >&2
    exit 1
}

# make_venv DIR PYTHON PIP_ARGS...: a virtualenv at DIR with the project and PIP_ARGS installed.
make_venv() {
    local dir=$1 python=$2
    shift 2
    if ! command -v "$python" >/dev/null 2>&1; then
        echo "$python not found: install Python 3.9 or newer, or set PYTHON=/path/to/python" >&2
        exit 1
    fi
    if [ ! -x "$dir/bin/python" ]; then
        "$python" -m venv "$dir"
    fi
    # The venv's own pip, not the newest: pip >= 24.1 refuses the metadata of
    # Celery 5.0.x (its "pytz>dev" requirement), which the package supports.
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"
}
