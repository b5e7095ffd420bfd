// Filled in by the data-plane issue.
int main() { return 1; }
