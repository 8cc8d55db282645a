"""The ``infcomp`` console script: the CAPTCHA command line, or a one-line hint where the
``[captcha]`` extras (Pillow, the fonts, matplotlib) are not installed."""

import sys


def main(argv=None):
    try:
        from infcomp_models.captcha.cli import main as cli
    except ImportError as e:
        print(f"error: the infcomp command line needs the CAPTCHA extras ({e.name} is missing): "
              "pip install 'infcomp[captcha]'", file=sys.stderr)
        return 2
    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
