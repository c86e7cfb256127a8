// Command ambit-cni is Ambit's chained CNI plugin (placeholder; its owner replaces it).
package main

func main() {}
