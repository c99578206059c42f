"""python -m benchmarks.throughput"""

from benchmarks.throughput.cli import main

if __name__ == "__main__":
  main()
