// Command etcd is the etcd server, built from the pinned module in go.mod.
//
// Upstream's own server main needs its repository layout (go.mod replaces
// point at sibling folders), so this module supplies the entry point itself.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
