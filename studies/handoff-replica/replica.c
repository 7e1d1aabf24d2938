#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <fcntl.h>
static void pin(int c){cpu_set_t s;CPU_ZERO(&s);CPU_SET(c,&s);sched_setaffinity(0,sizeof s,&s);}
static long now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1000000000L+t.tv_nsec;}
static int cmp(const void*a,const void*b){long x=*(long*)a,y=*(long*)b;return x<y?-1:x>y;}
int X; /* extra syscalls on */
static void extra(int s){ if(!X)return; char b[8]; syscall(SYS_getpid);syscall(SYS_getpid);recv(s,b,8,MSG_DONTWAIT);}
int main(){int N=3000;X=getenv("EXTRA")!=0;int sep=getenv("SEP")!=0;int sv[2],ch[2],br[2];socketpair(AF_UNIX,getenv("SEQ")?SOCK_SEQPACKET:SOCK_STREAM,0,sv);socketpair(AF_UNIX,SOCK_SEQPACKET,0,ch);socketpair(AF_UNIX,SOCK_SEQPACKET,0,br);char data[64];memset(data,7,64);
 if(getenv("SPLIT"))pin(0);
 if(fork()==0){if(getenv("SPLIT"))pin(1);close(sv[0]);for(;;){char b[4];struct iovec io={b,4};char c[CMSG_SPACE(4)];struct msghdr m={0};m.msg_iov=&io;m.msg_iovlen=1;m.msg_control=c;m.msg_controllen=sizeof c;
  if(sep){if(recv(sv[1],b,4,0)<=0)exit(0);}else if(recvmsg(sv[1],&m,0)<=0)exit(0);
  long t0=now();extra(br[1]);
  if(sep){m.msg_controllen=sizeof c;recvmsg(ch[1],&m,MSG_DONTWAIT);}
  int fd;memcpy(&fd,CMSG_DATA(CMSG_FIRSTHDR(&m)),4);
  if(X){struct stat st;fstat(fd,&st);fcntl(fd,F_GET_SEALS);fcntl(fd,F_GETFL);}
  volatile char*p=mmap(0,64,PROT_READ,MAP_SHARED,fd,0);long s=0;for(int i=0;i<64;i++)s+=p[i];munmap((void*)p,64);extra(br[1]);close(fd);long dt=now()-t0+(s==1);write(sv[1],&dt,8);}}
 close(sv[1]);long*lat=malloc(8*N),*bs=malloc(8*N),*as=malloc(8*N);int pfd=syscall(SYS_pidfd_open,getpid(),0);
 for(int k=0;k<N;k++){long t0=now();if(X)syscall(SYS_getpid);int f=memfd_create("x",MFD_ALLOW_SEALING|MFD_CLOEXEC);pwrite(f,data,64,0);fcntl(f,F_ADD_SEALS,7);extra(br[0]);
  if(X){struct pollfd p={pfd,POLLIN,0};struct timespec z={0,0};ppoll(&p,1,&z,0);}
  char b[4]={0};struct iovec io={b,4};char c[CMSG_SPACE(4)];struct msghdr m={0};m.msg_iov=&io;m.msg_iovlen=1;m.msg_control=c;m.msg_controllen=sizeof c;
  struct cmsghdr*h=CMSG_FIRSTHDR(&m);h->cmsg_level=SOL_SOCKET;h->cmsg_type=SCM_RIGHTS;h->cmsg_len=CMSG_LEN(4);memcpy(CMSG_DATA(h),&f,4);
  if(sep){sendmsg(ch[0],&m,MSG_DONTWAIT);close(f);as[k]=now()-t0;send(sv[0],b,4,0);}else{sendmsg(sv[0],&m,0);close(f);as[k]=now()-t0;}
  long dt;read(sv[0],&dt,8);lat[k]=now()-t0;bs[k]=dt;}
 qsort(lat,N,8,cmp);qsort(bs,N,8,cmp);qsort(as,N,8,cmp);printf("X=%d SEP=%d median total %ld alloc %ld B %ld\n",X,sep,lat[N/2],as[N/2],bs[N/2]);close(sv[0]);wait(0);}
