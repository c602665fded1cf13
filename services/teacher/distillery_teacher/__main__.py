"""`python -m distillery_teacher --models smollm2-135m,gemma3-270m --port 8100`."""

from distillery_teacher.server import main

if __name__ == "__main__":
    main()
