"""What config.json's `execution` says about the CPU: model name and vector flags."""
import platform

from tff_backdoor.execution import contexts

_CPUINFO = """processor\t: 0
model name\t: Fake EPYC
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni amx_tile
processor\t: 1
model name\t: Fake EPYC
flags\t\t: fpu sse4_2
"""


def test_cpu_simd_lists_the_first_processors_vector_flags(tmp_path, monkeypatch):
  path = tmp_path / 'cpuinfo'
  path.write_text(_CPUINFO)
  monkeypatch.setattr(contexts, 'CPUINFO', str(path))
  assert contexts._cpu_model() == 'Fake EPYC'
  assert contexts._cpu_simd() == ['amx_tile', 'avx', 'avx2', 'avx512_vnni', 'avx512f', 'fma']


def test_no_cpuinfo_gives_no_flags_and_the_platforms_name(tmp_path, monkeypatch):
  monkeypatch.setattr(contexts, 'CPUINFO', str(tmp_path / 'missing'))
  assert contexts._cpu_simd() == []
  assert contexts._cpu_model() == (platform.processor() or platform.machine())


def test_execution_settings_record_the_flags():
  settings = contexts.execution_settings()
  assert settings['cpu_simd'] == contexts._cpu_simd()
  assert all(flag.startswith(('avx', 'amx', 'fma')) for flag in settings['cpu_simd'])
