"""The ``passes`` command: every pass with its options, defaults and rules, from the registry."""

from __future__ import annotations

import click

from onnxshrink.cli.common import guarded, main


@main.command("passes")
@click.argument("name", required=False)
@guarded
def list_passes(name: str | None) -> None:
    """List every pass and preset, or show one with its options, defaults and rules."""
    import inspect as _inspect

    from onnxshrink import registry

    if name is None:
        for pass_name, cls in registry.passes().items():
            kind = "exact" if cls.exact else "lossy"
            click.echo(f"{pass_name:16} {kind:6} {registry.summary(cls)}")
        for named in registry.presets().values():
            click.echo(f"{named.name:16} preset {named.doc} ({' -> '.join(named.steps)})")
        return
    preset = registry.presets().get(name)
    if preset is not None:
        rounds = f", repeated to a fixed point (at most {preset.max_steps} rounds)" if preset.fixed_point else ""
        click.echo(f"{name} (preset): {preset.doc}\nruns: {' -> '.join(preset.steps)}{rounds}")
        return
    cls = registry.get_pass(name)
    click.echo(f"{name} ({'exact' if cls.exact else 'lossy'})\n")
    click.echo(_inspect.cleandoc(cls.__doc__ or ""))
    options = registry.options_of(cls)
    click.echo("\nOptions:" if options else "\nOptions: none")
    for info in options:
        default = ",".join(map(str, info.default)) if isinstance(info.default, tuple) else info.default
        click.echo(f"  {info.key}={info.type_name}  (default: {default})  {info.help}")
