"""The build compiles the translation catalogues (idp/translations/*/LC_MESSAGES/messages.po -> .mo), so no compiled
catalogue is committed; metadata lives in setup.cfg. Babel's own compile command is used through its public
class, as `pybabel compile -d idp/translations` would run it."""

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithCatalogues(build_py):
    def run(self):
        from babel.messages.frontend import CompileCatalog

        compile_cmd = CompileCatalog(self.distribution)
        compile_cmd.initialize_options()
        compile_cmd.directory = "idp/translations"
        compile_cmd.domain = "messages"
        compile_cmd.statistics = False
        compile_cmd.finalize_options()
        compile_cmd.run()
        super().run()


setup(cmdclass={"build_py": BuildWithCatalogues})
