"""Compiled and managed languages in the sandbox: the hostile suite in C++ and JavaScript (and the JVM's own traps in
Java), build steps with their own limits, and nothing of one program visible to the next.

Every test runs on both backends: local (each language skips with the reason when its toolchain is not installed
here; .ci/lang_setup.sh installs them) and docker (the sandbox-lang image's toolchains; skips with the reason when
there is no engine or no image: .ci/docker_setup.sh --lang builds it). Limits are small so that every case ends
quickly; no test asserts on elapsed time.
"""
import socket
import uuid

import pytest

import sandbox
from sandbox import local, toolchains

from test_hostile import leftovers


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
def backend(request):
    """Overrides conftest's: docker here needs the multi-language image."""
    if request.param == "docker":
        from sandbox import docker_backend
        try:
            docker_backend.client(docker_backend.LANG_IMAGE)
        except sandbox.SandboxUnavailable as e:
            pytest.skip(str(e))
    return request.param


def need(language, backend):
    why = toolchains.missing(language) if backend == "local" else None  # the image has every toolchain
    if why:
        pytest.skip(why)


@pytest.fixture(params=["cpp", "js"])
def language(request, backend):
    need(request.param, backend)
    return request.param


def run(language, source, cpu_s=2.0, timeout_s=None, memory_mb=256, *, backend, **limits):
    program = toolchains.program(language, source, memory_mb=memory_mb)
    return sandbox.run(program, cpu_s=cpu_s, timeout_s=timeout_s or 2 * cpu_s + 3, memory_mb=memory_mb,
                       backend=backend, **limits)


def has_cgroups(backend) -> bool:
    return backend == "docker" or bool(local.get_server().hello["features"].get("cgroups"))


CPP_NAME = '#include <sys/prctl.h>\nstatic void set_name(const char *n) { prctl(PR_SET_NAME, n, 0, 0, 0); }\n'
HOSTILE = {
    "cpp": {
        "fork_bomb": CPP_NAME + '#include <unistd.h>\nint main() { set_name("@NAME@"); for (;;) fork(); }\n',
        "memory_bomb": '#include <stdlib.h>\n#include <string.h>\n'
                       'int main() { for (;;) { char *p = (char *) malloc(1 << 20); if (!p) return 3; '
                       'memset(p, 1, 1 << 20); } }\n',
        "spin": "int main() { volatile unsigned long x = 0; for (;;) x++; }\n",
        "sleep": "#include <unistd.h>\nint main() { sleep(1000); }\n",
        "daemon": CPP_NAME + '#include <unistd.h>\nint main() { if (fork() == 0) { setsid(); if (fork() == 0) '
                             '{ set_name("@NAME@"); sleep(100); } } return 0; }\n',
        "writes_outside": '#include <stdio.h>\nint main() { const char *paths[] = {"/usr/codelm_probe", '
                          '"/etc/passwd", "/var/tmp/codelm_probe"}; for (int i = 0; i < 3; i++) '
                          '{ FILE *f = fopen(paths[i], "a"); printf("%s ", f ? "opened" : "denied"); } }\n',
        "network": '#include <stdio.h>\n#include <arpa/inet.h>\n#include <sys/socket.h>\n#include <unistd.h>\n'
                   'int main() { int s = socket(AF_INET, SOCK_STREAM, 0); struct sockaddr_in a = {}; '
                   'a.sin_family = AF_INET; a.sin_port = htons(PORT); a.sin_addr.s_addr = htonl(0x7f000001); '
                   'printf(connect(s, (struct sockaddr *) &a, sizeof a) == 0 ? "connected" : "refused"); }\n',
        "huge_output": '#include <stdio.h>\nint main() { for (;;) fputs("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", '
                       'stdout); }\n',
        "huge_file": '#include <stdio.h>\n#include <string.h>\nint main() { static char b[1 << 20]; '
                     'memset(b, 1, sizeof b); FILE *f = fopen("big", "w"); for (int i = 0; i < 64; i++) '
                     'if (fwrite(b, 1, sizeof b, f) != sizeof b) return 4; return fclose(f) ? 5 : 0; }\n',
        "early_exit": "#include <stdlib.h>\nint main() { exit(0); }\n",
    },
    "js": {
        "fork_bomb": "process.title = '@NAME@'; const cp = require('child_process');\n"
                     "for (;;) { try { cp.spawn(process.execPath, ['-e', 'process.title=\"@NAME@\"; "
                     "setInterval(() => {}, 1000)'], {stdio: 'ignore'}); } catch (e) {} }\n",
        "memory_bomb": "const a = []; for (;;) a.push(Buffer.alloc(1 << 20, 1));\n",
        "spin": "for (;;) {}\n",
        "sleep": "setTimeout(() => {}, 1e9);\n",
        "daemon": "require('child_process').spawn(process.execPath, ['-e', 'process.title=\"@NAME@\"; "
                  "setInterval(() => {}, 1000)'], {detached: true, stdio: 'ignore'}).unref();\n",
        "writes_outside": "const fs = require('fs'); const out = [];\n"
                          "for (const p of ['/usr/codelm_probe', '/etc/passwd', '/var/tmp/codelm_probe']) {\n"
                          "  try { fs.appendFileSync(p, 'x'); out.push('opened'); } catch (e) { out.push('denied'); }"
                          "\n}\nprocess.stdout.write(out.join(' ') + ' ');\n",
        "network": "const s = require('net').connect(PORT, '127.0.0.1');\n"
                   "s.on('connect', () => { process.stdout.write('connected'); process.exit(0); });\n"
                   "s.on('error', () => { process.stdout.write('refused'); });\n",
        "huge_output": "const s = 'x'.repeat(1 << 16); for (;;) process.stdout.write(s);\n",
        "huge_file": "require('fs').writeFileSync('big', Buffer.alloc(64 << 20, 1));\n",
        "early_exit": "process.exit(0);\n",
    },
}


def named(language, case):
    name = "hx" + uuid.uuid4().hex[:8]
    return name, HOSTILE[language][case].replace("@NAME@", name)


def test_fork_bomb_is_contained(language, backend):
    name, source = named(language, "fork_bomb")
    r = run(language, source, cpu_s=1, timeout_s=3, max_processes=32, backend=backend)
    assert r.step == "run" and r.status in ("timeout", "failed"), r
    assert leftovers(backend, name) == []
    assert run(language, HOSTILE[language]["early_exit"], backend=backend).status == "ok"  # the sandbox still works


def test_memory_bomb_is_stopped(language, backend):
    r = run(language, HOSTILE[language]["memory_bomb"], cpu_s=5, memory_mb=256, backend=backend)
    assert r.step == "run" and r.status != "ok"
    if has_cgroups(backend) and language == "cpp":
        assert r.status == "memory", r  # the cgroup's OOM kill (no cgroup: malloc fails under RLIMIT_AS)


def test_cpu_spin_stops_at_the_cpu_budget(language, backend):
    r = run(language, HOSTILE[language]["spin"], cpu_s=1, backend=backend)
    assert r.status == "timeout" and r.step == "run"


def test_sleeping_forever_stops_at_the_wall_limit(language, backend):
    r = run(language, HOSTILE[language]["sleep"], cpu_s=1, timeout_s=2, backend=backend)
    assert r.status == "timeout" and r.step == "run"


def test_daemons_die_with_the_run(language, backend):
    name, source = named(language, "daemon")
    r = run(language, source, backend=backend)
    assert r.status == "ok", r
    assert leftovers(backend, name) == []


def test_writes_outside_the_work_dir_fail(language, backend):
    r = run(language, HOSTILE[language]["writes_outside"], backend=backend)
    assert r.stdout.split() == ["denied"] * 3, r


def test_no_network_even_to_host_loopback(language, backend):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        r = run(language, HOSTILE[language]["network"].replace("PORT", str(port)), cpu_s=2, timeout_s=4,
                backend=backend)
    assert r.step == "run" and "refused" in r.stdout


def test_huge_output_hits_the_cap(language, backend):
    r = run(language, HOSTILE[language]["huge_output"], max_output_bytes=1 << 16, backend=backend)
    assert r.status == "output_limit" and len(r.stdout) <= 1 << 16


def test_huge_files_are_refused(language, backend):
    r = run(language, HOSTILE[language]["huge_file"], max_file_mb=8, cpu_s=3, backend=backend)
    assert r.step == "run" and r.status == "failed", r


def test_a_failed_build_is_a_failure_of_the_build_step(backend):
    need("cpp", backend)
    r = run("cpp", "int main() { return undefined_name; }\n", backend=backend)
    assert (r.status, r.step) == ("failed", "build")
    assert "undefined_name" in r.stderr


def test_build_outputs_and_files_do_not_reach_the_next_program(backend):
    need("cpp", backend)
    first = run("cpp", '#include <stdio.h>\nint main() { FILE *f = fopen("left_behind", "w"); '
                       'fputs("secret", f); return 0; }\n', backend=backend)
    assert first.status == "ok"
    second = run("cpp", '#include <stdio.h>\nint main() { printf("%d %d", fopen("left_behind", "r") != 0, '
                        'fopen("main.cpp.old", "r") != 0); }\n', backend=backend)
    assert second.stdout == "0 0"


def test_toolchain_caches_are_read_only_to_programs(backend):
    need("cpp", backend)
    header = toolchains.cpp_pch_header() if backend == "local" else f"{toolchains.IMAGE_ROOT}/cpp-pch/common.h"
    r = run("cpp", f'#include <stdio.h>\nint main() {{ printf("%s", fopen("{header}.gch", "a") ? "opened" : '
                   f'"denied"); }}\n', backend=backend)
    assert r.stdout == "denied"


def test_java_runs_and_its_failures_fail(backend):
    need("java", backend)
    ok = run("java", 'public class Main { public static void main(String[] a) { System.out.print("hi"); } }\n',
             cpu_s=10, memory_mb=512, backend=backend)
    assert (ok.status, ok.stdout) == ("ok", "hi"), ok
    bomb = run("java", "import java.util.*;\npublic class Main { public static void main(String[] a) { "
                       "List<long[]> l = new ArrayList<>(); for (;;) l.add(new long[1 << 17]); } }\n",
               cpu_s=10, memory_mb=512, backend=backend)
    assert bomb.status in ("failed", "memory") and ("OutOfMemoryError" in bomb.stderr or bomb.status == "memory")
    spin = run("java", "public class Main { public static void main(String[] a) { for (;;) {} } }\n",
               cpu_s=2, memory_mb=512, backend=backend)
    assert spin.status == "timeout"


@pytest.mark.parametrize("lang", ["go", "rust"])
def test_go_and_rust_build_and_run(lang, backend):
    need(lang, backend)
    source = {"go": 'package main\nimport ("testing"; "fmt")\nfunc TestX(t *testing.T) { fmt.Print("hi") }\n',
              "rust": '#[test]\nfn t() { use std::io::Write; std::io::stdout().write_all(b"hi").unwrap(); }\n'}
    r = run(lang, source[lang], cpu_s=5, memory_mb=512, backend=backend)
    assert r.status == "ok" and "hi" in r.stdout, r


def test_missing_language_is_named():
    with pytest.raises(ValueError, match="unknown language"):
        toolchains.missing("cobol")


@pytest.mark.docker
def test_docker_steps_get_their_own_limits_and_a_tmpfs(backend):
    """The build step ran under BUILD's 2 GB and 256 processes; the program it built sees only the run's limits
    (the container's cgroup, set between the steps), and its work dir is the container's tmpfs."""
    if backend != "docker":
        pytest.skip("the docker backend's container limits")
    source = ('#include <stdio.h>\n#include <sys/vfs.h>\n'
              'static void show(const char *p) { char b[64] = ""; FILE *f = fopen(p, "r"); '
              'if (f) { fscanf(f, "%63s", b); fclose(f); } printf("%s ", b); }\n'
              'int main() { show("/sys/fs/cgroup/memory/memory.limit_in_bytes"); show("/sys/fs/cgroup/memory.max"); '
              'show("/sys/fs/cgroup/pids/pids.max"); show("/sys/fs/cgroup/pids.max"); struct statfs s; '
              'statfs(".", &s); printf("%lx", (unsigned long) s.f_type); }\n')
    r = run("cpp", source, memory_mb=300, max_processes=40, backend=backend)
    assert r.status == "ok", r
    assert r.stdout.split() == [str(300 << 20), "40", "1021994"], r.stdout  # 0x1021994: TMPFS_MAGIC


def test_programs_for_the_image_name_only_the_images_artifacts():
    """What the docker backend sends must not point at this host's toolchain cache (invisible in a container), and
    needs no toolchain here to be described."""
    host_paths = (str(toolchains.cache_root()), "/host/vendor")
    for language in toolchains.LANGUAGES:
        program = toolchains.program(language, "source", cpp_pch=True, image=True,
                                     go_module={"go.mod": "module m\n", "vendor": "/host/vendor"})
        argv = " ".join(arg for step in program.steps for arg in step.argv)
        assert not any(path in argv for path in host_paths), argv
        assert program.recipe["language"] == language and program.recipe["source"] == "source"
        if language != "js":  # the others use a warm artifact of the image's
            assert toolchains.IMAGE_ROOT in argv, argv
