// Package samples holds the sample workloads the demo and the end-to-end
// tests run inside pods: an echo server that speaks HTTP/1.1, h2c and gRPC on
// one port, a TCP echo server, a server-first "banner" server, and a load
// client that summarises what it saw.
//
// Every server reports what it observed (the peer address above all), since
// that is what a mesh changes or must preserve.
package samples
