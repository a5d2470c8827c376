"""Installs the `tff_backdoor` library, the `studies` built on it and the `experiments` programs.

The TFF 0.87 stack cannot be resolved by plain pip on Python 3.11 (see BUILD_NOTES.md), so
the pinned stack is installed by `make venv` from requirements/; install_requires here only
names what must already be importable.
"""
from setuptools import find_packages, setup

setup(
    name='tff_backdoor',
    version='0.1.0',
    description='Backdoor attacks and defenses in federated learning on TensorFlow Federated',
    packages=find_packages(include=['tff_backdoor', 'tff_backdoor.*', 'studies', 'studies.*',
                                    'experiments', 'experiments.*']),
    python_requires='>=3.9,<3.12',
    install_requires=[
        'tensorflow>=2.14,<2.15',
        'tensorflow-federated==0.87.0',
        'tensorflow-privacy==0.9.0',
        'numpy>=1.25,<1.26',
        'absl-py',
    ],
)
