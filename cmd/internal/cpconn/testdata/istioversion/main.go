// Command istioversion prints cpconn.IstioVersion() (TestIstioVersionOfABuild).
package main

import (
	"fmt"

	"github.com/ambit-mesh/ambit/cmd/internal/cpconn"
)

func main() { fmt.Println(cpconn.IstioVersion()) }
