import os;exec("def r(n):\n b=bytes()\n while len(b)<n:\n  c=os.read(3,n-len(b))\n  if not c:os._exit(70)\n  b+=c\n return b");os.dup2(0,3);os.dup2(1,4);os.dup2(2,1);exec(r(int(r(10))))
