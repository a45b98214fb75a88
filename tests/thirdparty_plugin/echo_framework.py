"""The 'echo' framework: a Python echo service, proving third parties can add frameworks."""

from enclave_build.plugin import Field, Framework, Port, Section, base_plan, hookimpl

SECTION = Section(
    "echo",
    "echo service options",
    (
        Field("port", "int", "TCP port", default=7007, minimum=1, maximum=65535),
        Field("greeting", "str", "what to say first", default="hello"),
    ),
    owner="echo",
)


def plan(spec):
    opts = spec.section("echo")
    result = base_plan(
        spec,
        FRAMEWORK,
        entrypoint="/usr/bin/python3",
        argv=["/usr/bin/python3", "-m", "echo", "--port", str(opts["port"])],
        env={"ECHO_GREETING": opts["greeting"]},
        trusted=["/usr/bin/python3", "/usr/lib/python3/"],
        ports=[Port(opts["port"], "echo")],
    )
    return result


FRAMEWORK = Framework(
    name="echo",
    description="echo service (third-party example)",
    default_base="example/echo-base:1",
    plan=plan,
    section=SECTION,
    default_enclave_size=1 << 30,
    default_max_threads=8,
)


@hookimpl
def enclave_build_frameworks():
    return [FRAMEWORK]


@hookimpl
def enclave_build_configure(spec, plan):
    plan.env["ECHO_CONFIGURED_BY"] = "echo-plugin"
    plan.labels["org.example.echo"] = "yes"


@hookimpl
def enclave_build_register_commands(cli):
    import click

    @cli.group("echo")
    def echo_group():
        """The echo plugin's own commands."""

    @echo_group.command("greet")
    @click.argument("name")
    def greet(name):
        """Print the greeting the echo service would send NAME."""
        click.echo(f"{SECTION.fields[1].default}, {name}")
