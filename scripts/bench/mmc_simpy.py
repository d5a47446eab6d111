import random, sys, time
import simpy
LAMBDA, MU, C, JOBS = 2.4, 0.7, 4, 200_000
def main(seed=1):
    random.seed(seed)
    env = simpy.Environment()
    servers = simpy.Resource(env, capacity=C)
    waits = []
    def job(env):
        arrive = env.now
        with servers.request() as req:
            yield req
            waits.append(env.now - arrive)
            yield env.timeout(random.expovariate(MU))
    def source(env):
        for _ in range(JOBS):
            env.process(job(env))
            yield env.timeout(random.expovariate(LAMBDA))
    env.process(source(env))
    env.run()
    return sum(waits) / len(waits), len(waits)
t = time.perf_counter()
mean, n = main()
print(f"simpy: {n} jobs, mean wait {mean:.4f} s, {time.perf_counter() - t:.3f} s wall")
