"""Source text of a TensorFlow Lite Micro project, from :class:`ModelFacts` and :class:`TflmOptions`.

One renderer per file; the language (C++ or C for the model data and settings) and the
layout (plain folder or Arduino library) are registries, so adding one is adding an entry.
Every piece of text that comes from the model or the user goes through
:func:`workbench.export.c_names.comment_text` or :func:`~workbench.export.c_names.c_string`.
"""

from __future__ import annotations


from workbench.export.tflm_facts import ModelFacts, TflmOptions
from workbench.export.tflm_render_app import _library_properties, _main_cc, _op_resolver, _sketch
from workbench.export.tflm_render_data import _c_data_header, _c_data_source, _c_settings, _cpp_data_header, _cpp_data_source, _cpp_settings
from workbench.export.tflm_render_docs import _arduino_build_notes, _plain_build_notes, _readme
from workbench.export.tflm_text import LANGS, LAYOUTS, CNames, CppNames, Lang, Layout, _ext, md_text  # noqa: F401  (md_text, Lang: re-exported)





# --------------------------------------------------------------------------- registries


LANGS.add("cpp", Lang("cpp", data_ext=lambda layout: "cpp" if layout == "arduino" else "cc", names=CppNames,
                      render_data_header=_cpp_data_header, render_data_source=_cpp_data_source,
                      render_settings=_cpp_settings))
LANGS.add("c", Lang("c", data_ext=lambda layout: "c", names=CNames, render_data_header=_c_data_header,
                    render_data_source=_c_data_source, render_settings=_c_settings, data_compile="gcc -std=c11"))

LAYOUTS.add("plain", Layout("plain", src_dir="", build_notes=_plain_build_notes,
                            render_example=lambda f, o, lang: {"main.cc": _main_cc(f, o, lang)}))
LAYOUTS.add("arduino", Layout("arduino", src_dir="src", build_notes=_arduino_build_notes,
                              render_example=lambda f, o, lang: {
                                  f"examples/{f.name}/{f.name}.ino": _sketch(f, o, lang),
                                  "library.properties": _library_properties(f, o),
                              }))


def render_files(facts: ModelFacts, opts: TflmOptions) -> dict[str, str]:
    """Every generated file's text by its path inside the project folder."""
    lang, layout = LANGS.get(opts.lang), LAYOUTS.get(opts.layout)
    src = f"{layout.src_dir}/" if layout.src_dir else ""
    files = {
        f"{src}{facts.name}_model_data.h": lang.render_data_header(facts, opts),
        f"{src}{facts.name}_model_data.{_ext(opts)}": lang.render_data_source(facts, opts),
        f"{src}{facts.name}_model_settings.h": lang.render_settings(facts),
        f"{src}{facts.name}_op_resolver.h": _op_resolver(facts),
        **layout.render_example(facts, opts, lang),
    }
    files["README.md"] = _readme(facts, opts, lang, layout, [*files, "README.md", "manifest.json"])
    return files
