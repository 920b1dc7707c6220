"""notebooks/: committed without outputs, and both execute headless without a cell error.

quickstart.ipynb runs in tiny mode (TINY=True) on a synthetic MNIST manual dir; diagnostics.ipynb
then runs on the workdir it produced. The kernel is this interpreter (`sys.executable`), through
a kernel spec in a temporary folder, so whatever Jupyter kernels the machine has do not matter.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from testdata import write_mnist_dir

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(REPO_ROOT, 'notebooks')
NOTEBOOKS = ('quickstart.ipynb', 'diagnostics.ipynb')
KERNEL_NAME = 'tsvae-test-python'
CELL_TIMEOUT_S = 300


def _read(name):
  with open(os.path.join(NOTEBOOK_DIR, name)) as f:
    return nbformat.read(f, as_version=4)


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_committed_notebook_is_valid_and_has_no_outputs(name):
  nb = _read(name)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert code
  for cell in code:
    assert cell.outputs == [], f'{name}: cell {cell.get("id")} has outputs; strip them'
    assert cell.execution_count is None, f'{name}: cell {cell.get("id")} has an execution count'
  for cell in nb.cells:
    assert 'attachments' not in cell or not cell.attachments
  assert 'widgets' not in nb.metadata
  tagged = [c for c in code if 'parameters' in c.metadata.get('tags', [])]
  assert len(tagged) == 1, f'{name}: needs exactly one cell tagged "parameters"'
  assert any(c.cell_type == 'markdown' for c in nb.cells)


def _setup_source():
  """The setup cell, the same in both notebooks."""
  sources = [[c.source for c in _read(name).cells if c.get('id') == 'setup'] for name in NOTEBOOKS]
  assert all(len(s) == 1 for s in sources) and sources[0] == sources[1]
  return sources[0][0]


def test_setup_outside_a_checkout_needs_tsvae_repo_then_clones_it(tmp_path):
  source = _setup_source()
  assert "TSVAE_REPO = ''  # @param" in source  # A Colab form field, empty: no public URL yet.

  def run(src):
    return subprocess.run([sys.executable, '-c', src], cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=120)

  result = run(source)
  assert result.returncode != 0
  assert 'not running inside a tsvae checkout and TSVAE_REPO is empty' in result.stderr
  assert not os.listdir(tmp_path)  # Nothing was cloned or installed.
  if not shutil.which('git') or not os.path.isdir(os.path.join(REPO_ROOT, '.git')):
    pytest.skip('needs git and a git checkout to clone from')
  # TSVAE_REPO set: the (committed) repository is cloned and used; its dependencies are all
  # importable here, so nothing is pip-installed.
  result = run(source.replace("TSVAE_REPO = ''", f"TSVAE_REPO = 'file://{REPO_ROOT}'", 1))
  assert result.returncode == 0, result.stderr
  clone = tmp_path / 'tsvae-checkout'
  assert (clone / 'tsvae' / 'pipeline.py').exists()
  assert f'tsvae repository: {clone}' in result.stdout
  result = run(source)  # A second run reuses the clone, with TSVAE_REPO empty again.
  assert result.returncode == 0 and f'tsvae repository: {clone}' in result.stdout


def _with_parameters(nb, **params):
  """A copy of `nb` with a cell assigning `params` right after its parameters cell."""
  nb = nbformat.from_dict(json.loads(json.dumps(nb)))
  index = next(i for i, c in enumerate(nb.cells)
               if 'parameters' in c.metadata.get('tags', []))
  source = '\n'.join(f'{k} = {v!r}' for k, v in params.items())
  cell = nbformat.v4.new_code_cell(source)
  cell.id = 'injected-parameters'
  cell.metadata['tags'] = ['injected-parameters']
  nb.cells.insert(index + 1, cell)
  return nb


def _kernel_manager(tmp_path):
  """A kernel manager whose only kernel spec runs ipykernel on this interpreter."""
  from jupyter_client.kernelspec import KernelSpecManager  # pylint: disable=g-import-not-at-top
  from jupyter_client.manager import AsyncKernelManager  # pylint: disable=g-import-not-at-top
  kernels = tmp_path / 'kernels'
  (kernels / KERNEL_NAME).mkdir(parents=True, exist_ok=True)
  spec = {
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
      'display_name': 'tsvae test kernel',
      'language': 'python',
      'env': {
          'JAX_PLATFORMS': 'cpu',
          'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
          'TF_CPP_MIN_LOG_LEVEL': '2',
          'IPYTHONDIR': str(tmp_path / 'ipython'),
          'MPLBACKEND': 'module://matplotlib_inline.backend_inline',
          'TSVAE_CACHE_DIR': str(tmp_path / 'cache'),
      },
  }
  (kernels / KERNEL_NAME / 'kernel.json').write_text(json.dumps(spec))
  spec_manager = KernelSpecManager(kernel_dirs=[str(kernels)])
  return AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=spec_manager)


def _execute(nb, tmp_path):
  client = nbclient.NotebookClient(
      nb, km=_kernel_manager(tmp_path), timeout=CELL_TIMEOUT_S, allow_errors=False,
      resources={'metadata': {'path': NOTEBOOK_DIR}})
  client.execute()  # Raises CellExecutionError (cell source and traceback) on any error.
  return nb


def _text(nb):
  """Every text output of the executed notebook, concatenated."""
  out = []
  for cell in nb.cells:
    for output in cell.get('outputs', []):
      if output.output_type == 'stream':
        out.append(output.text)
      elif 'data' in output:
        out.append(output.data.get('text/plain', ''))
        out.append(output.data.get('text/markdown', ''))
  return '\n'.join(out)


def _images(nb):
  return sum('image/png' in o.get('data', {}) for c in nb.cells for o in c.get('outputs', []))


def test_notebooks_execute(tmp_path, monkeypatch):
  monkeypatch.setenv('JUPYTER_RUNTIME_DIR', str(tmp_path / 'jupyter_runtime'))
  manual_dir, data_dir = str(tmp_path / 'mnist'), str(tmp_path / 'tfds')
  write_mnist_dir(manual_dir)
  workdir = str(tmp_path / 'workdir')

  quickstart = _execute(_with_parameters(
      _read('quickstart.ipynb'), WORKDIR=workdir, MANUAL_DIR=manual_dir, DATA_DIR=data_dir,
      TINY=True), tmp_path)
  for name in ('stage1_samples', 'stage2_samples', 'reconstructions'):
    assert os.path.exists(os.path.join(workdir, 'samples', f'{name}.png'))
  assert 'stage 1 steps: 5 | stage 2 steps: 10' in _text(quickstart)
  assert _images(quickstart) == 2  # The sample grids and the training curves.

  # A metrics.json in the layout tsvae.evaluate writes, so that its display cell runs too.
  os.makedirs(os.path.join(workdir, 'eval'))
  with open(os.path.join(workdir, 'eval', 'metrics.json'), 'w') as f:
    json.dump({'proxy_fd_stage2': 12.5, 'fid_stage2': None, 'active_dims': 3,
               'fid_unavailable_reason': 'test: no Inception weights', 'plots': {}}, f)
  diagnostics = _execute(_with_parameters(
      _read('diagnostics.ipynb'), WORKDIR=workdir, NUM_CODES=32, NUM_SWEEP_BASES=2,
      PLOT_DIR=str(tmp_path / 'plots')), tmp_path)
  text = _text(diagnostics)
  assert 'dims active (mean σ_z² < 0.05)' in text
  assert 'stage 2: u' in text and 'test: no Inception weights' in text
  assert _images(diagnostics) == 4  # σ² histogram, singular values, sweep bars and images.
  for plot in ('sigma2_hist', 'singular_values', 'latent_sweep', 'latent_sweep_images'):
    assert os.path.exists(tmp_path / 'plots' / f'{plot}.png')
